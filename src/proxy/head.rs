//! Where a request head ends and what it says about its body, found as the
//! bytes arrive, without keeping them.
//!
//! [`super::framing`]'s tap needs three things from each request head: where
//! it ends, its method (to check that hyper read the same head), and its
//! framing headers (`Content-Length`, `Transfer-Encoding`). hyper already
//! holds the head in its read buffer while it arrives; a second copy for the
//! tap doubled what a connection trickling a head up to `max_header_bytes`
//! costs. [`HeadScan`] reads the head byte by byte as it is read and keeps a
//! few dozen bytes of state, whatever the head's size.
//!
//! The boundaries are httparse's (the parser hyper uses, with hyper's
//! default settings, which sidekey keeps): empty lines (CRLF or bare LF)
//! before the request line are skipped; the request line and each header
//! line end at their first LF (a CR is allowed only right before it, and no
//! other control byte, so no LF hides inside a line); the head ends at the
//! first line, after the request line, that starts with CR or LF. A header
//! name runs to its colon (no whitespace before it); its value follows
//! optional spaces and tabs, and trailing whitespace is not part of it.
//!
//! The scanner only has to agree with httparse on heads that hyper accepted:
//! a head hyper refuses is answered 400 or 431 and the connection closed,
//! so no verdict about it is ever asked for. On bytes httparse refuses the
//! scanner may read anything, in bounded memory and without panicking; a
//! CR without its LF before the request line or where the head ends stops
//! it for good (the head never completes, so the tap fails closed). The
//! unit tests and the `request_head` fuzz target compare it with httparse.

/// The header name whose value is the body's length.
const CONTENT_LENGTH: &[u8] = b"content-length";

/// The header name that makes the body chunked (or, with a
/// `Content-Length`, a request the tap refuses).
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";

/// Bytes of the method kept verbatim; longer methods are compared by
/// length and hash too.
const METHOD_PREFIX: usize = 16;

/// A request method as read from the head, in a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodSeen {
    len: usize,
    prefix: [u8; METHOD_PREFIX],
    /// FNV-1a of every byte: a method longer than the prefix must match in
    /// its rest too.
    hash: u64,
}

impl Default for MethodSeen {
    fn default() -> Self {
        MethodSeen {
            len: 0,
            prefix: [0; METHOD_PREFIX],
            hash: FNV_OFFSET,
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl MethodSeen {
    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.prefix.get_mut(self.len) {
            *slot = byte;
        }
        self.len = self.len.saturating_add(1);
        self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }

    /// Whether this is `method` (as hyper spells it: the bytes of the head).
    pub fn is(&self, method: &str) -> bool {
        let mut other = MethodSeen::default();
        method.bytes().for_each(|byte| other.push(byte));
        *self == other
    }
}

/// What a complete head says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its method.
    pub method: MethodSeen,
    /// Its `Content-Length`: the last readable value, or 0 when every one
    /// was unreadable (hyper refuses such a head unless a
    /// `Transfer-Encoding` precedes it, which makes it a conflict anyway).
    pub content_length: Option<u64>,
    /// Whether it has a `Transfer-Encoding` line.
    pub transfer_encoding: bool,
}

/// How far [`HeadScan::scan`] got.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Every byte belonged to the head, which goes on.
    More,
    /// The head ended after this many of the bytes.
    Complete(usize, Head),
}

/// Where in the head the bytes read so far end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum At {
    /// Before the request line: empty lines are skipped.
    #[default]
    Start,
    /// After a CR before the request line: LF is next.
    StartCr,
    /// In the method.
    Method,
    /// In the request line after the method.
    RequestLine,
    /// At the start of a header line or of the final empty line.
    LineStart,
    /// After the CR of the final empty line: LF is next.
    EndCr,
    /// In a header name, this many bytes in, which may still be one of the
    /// two that matter.
    Name {
        len: usize,
        length: bool,
        encoding: bool,
    },
    /// In a `Content-Length` value.
    Length(Digits),
    /// In a line whose rest does not matter.
    Skip,
    /// Not an HTTP head (a CR without its LF): it never completes.
    Broken,
}

/// A `Content-Length` value read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Digits {
    /// Spaces and tabs after the colon.
    Leading,
    /// Digits so far, then perhaps trailing whitespace.
    Number { value: u64, ended: bool },
    /// Not a number hyper reads.
    Unreadable,
}

/// A request head being read.
#[derive(Clone, Debug, Default)]
pub struct HeadScan {
    at: At,
    method: MethodSeen,
    content_length: Option<u64>,
    transfer_encoding: bool,
}

impl HeadScan {
    /// Read the next `bytes` of the head. After [`Scan::Complete`] the
    /// scanner is ready for the next head.
    pub fn scan(&mut self, bytes: &[u8]) -> Scan {
        let mut at = 0;
        while let Some(&byte) = bytes.get(at) {
            at += 1;
            self.at = match self.at {
                At::Start => match byte {
                    b'\r' => At::StartCr,
                    b'\n' => At::Start,
                    _ => {
                        self.method.push(byte);
                        At::Method
                    }
                },
                At::StartCr if byte == b'\n' => At::Start,
                At::EndCr if byte == b'\n' => return self.complete(at),
                At::StartCr | At::EndCr => At::Broken,
                At::Method if byte == b' ' => At::RequestLine,
                At::Method => {
                    self.method.push(byte);
                    At::Method
                }
                At::RequestLine | At::Skip => match memchr::memchr(b'\n', &bytes[at - 1..]) {
                    Some(lf) => {
                        at += lf;
                        At::LineStart
                    }
                    None => {
                        at = bytes.len();
                        self.at
                    }
                },
                At::LineStart => match byte {
                    b'\r' => At::EndCr,
                    b'\n' => return self.complete(at),
                    _ => Self::name(0, true, true, byte),
                },
                At::Name { .. } if byte == b'\n' => At::LineStart,
                At::Name {
                    len,
                    length,
                    encoding,
                } => {
                    if byte == b':' {
                        if length && len == CONTENT_LENGTH.len() {
                            At::Length(Digits::Leading)
                        } else {
                            if encoding && len == TRANSFER_ENCODING.len() {
                                self.transfer_encoding = true;
                            }
                            At::Skip
                        }
                    } else {
                        Self::name(len, length, encoding, byte)
                    }
                }
                At::Length(digits) if byte == b'\n' => {
                    self.content_length = match digits {
                        Digits::Number { value, .. } => Some(value),
                        Digits::Leading | Digits::Unreadable => self.content_length.or(Some(0)),
                    };
                    At::LineStart
                }
                At::Length(digits) => At::Length(digits.next(byte)),
                At::Broken => {
                    at = bytes.len();
                    At::Broken
                }
            };
        }
        Scan::More
    }

    /// The state after `byte`, the name's byte at `len`.
    fn name(len: usize, length: bool, encoding: bool, byte: u8) -> At {
        let lower = byte.to_ascii_lowercase();
        let length = length && CONTENT_LENGTH.get(len) == Some(&lower);
        let encoding = encoding && TRANSFER_ENCODING.get(len) == Some(&lower);
        if length || encoding {
            At::Name {
                len: len + 1,
                length,
                encoding,
            }
        } else {
            At::Skip
        }
    }

    fn complete(&mut self, used: usize) -> Scan {
        let done = std::mem::take(self);
        Scan::Complete(
            used,
            Head {
                method: done.method,
                content_length: done.content_length,
                transfer_encoding: done.transfer_encoding,
            },
        )
    }
}

impl Digits {
    fn next(self, byte: u8) -> Digits {
        match (self, byte) {
            (Digits::Leading, b' ' | b'\t') => Digits::Leading,
            (Digits::Leading, b'0'..=b'9') => Digits::Number {
                value: u64::from(byte - b'0'),
                ended: false,
            },
            (
                Digits::Number {
                    value,
                    ended: false,
                },
                b'0'..=b'9',
            ) => value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                .map_or(Digits::Unreadable, |value| Digits::Number {
                    value,
                    ended: false,
                }),
            (Digits::Number { value, .. }, b' ' | b'\t' | b'\r') => {
                Digits::Number { value, ended: true }
            }
            _ => Digits::Unreadable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Head, HeadScan, MethodSeen, Scan};

    /// Where the head at the start of `bytes` ends and what it says, read as
    /// hyper reads it: httparse with its default settings, then hyper's
    /// `Content-Length` rule (digits only, no sign). `None` unless httparse
    /// completes it.
    fn httparse_head(bytes: &[u8]) -> Option<(usize, Head)> {
        let mut headers = vec![httparse::EMPTY_HEADER; bytes.len() + 1];
        let mut request = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = request.parse(bytes).ok()? else {
            return None;
        };
        let mut method = MethodSeen::default();
        request.method?.bytes().for_each(|byte| method.push(byte));
        let mut head = Head {
            method,
            content_length: None,
            transfer_encoding: false,
        };
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("transfer-encoding") {
                head.transfer_encoding = true;
            } else if header.name.eq_ignore_ascii_case("content-length") {
                let digits =
                    !header.value.is_empty() && header.value.iter().all(u8::is_ascii_digit);
                let value = std::str::from_utf8(header.value).ok().filter(|_| digits);
                head.content_length = match value.and_then(|v| v.parse::<u64>().ok()) {
                    Some(length) => Some(length),
                    None => head.content_length.or(Some(0)),
                };
            }
        }
        Some((len, head))
    }

    /// Scan `bytes` in reads of `read` bytes: where the first head ends and
    /// what it says, if it ends.
    fn scan(bytes: &[u8], read: usize) -> Option<(usize, Head)> {
        let mut scanner = HeadScan::default();
        let mut at = 0;
        for chunk in bytes.chunks(read) {
            if let Scan::Complete(used, head) = scanner.scan(chunk) {
                assert!(used <= chunk.len());
                return Some((at + used, head));
            }
            at += chunk.len();
        }
        None
    }

    /// Every head httparse completes, the scanner completes at the same
    /// byte with the same verdict, however the bytes are split into reads;
    /// whether httparse completed it.
    fn agrees_with_httparse(bytes: &[u8]) -> bool {
        let Some(expected) = httparse_head(bytes) else {
            return false;
        };
        for read in [bytes.len(), 1, 2, 3, 7] {
            assert_eq!(
                scan(bytes, read),
                Some(expected),
                "reads of {read}: {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        true
    }

    #[test]
    fn reads_heads_as_httparse_does() {
        let heads: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\n\n",
            b"\r\n\n\r\nPOST /a?b HTTP/1.1\r\nContent-Length: 12\r\n\r\nbody",
            b"PUT /a HTTP/1.1\r\nhost: x\r\nCONTENT-LENGTH:\t 0042 \t\r\n\r\n",
            b"PUT /a HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: x\r\n\r\n",
            b"POST /a HTTP/1.1\r\ncontent-length: +5\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\ncontent-length:\r\ntransfer-encoding:\r\n\r\n",
            b"POST /a HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"POST /a HTTP/1.1\r\ncontent-length: 18446744073709551615\r\n\r\n",
            b"POST /a HTTP/1.1\r\ncontent-lengthy: 5\r\ncontent-lengt: 5\r\n\r\n",
            b"POST /a HTTP/1.1\r\ntransfer-encodings: chunked\r\nx-transfer-encoding: chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\nx: content-length: 5\r\ny: \r\n\r\n",
            b"VERY-LONG-EXTENSION-METHOD-NAME / HTTP/1.0\r\nx:y\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ];
        for head in heads {
            assert!(agrees_with_httparse(head), "{head:?}");
        }
    }

    /// Heads put together from pieces that matter to either reader; one
    /// piece in ten is one httparse refuses (nothing is compared then).
    #[test]
    fn reads_generated_heads_as_httparse_does() {
        /// Valid pieces first, then as many invalid ones as the number says.
        type Pieces = (&'static [&'static str], usize);
        const STARTS: Pieces = (&["", "\r\n", "\n", "\r\n\n", "\r"], 1);
        const METHODS: Pieces = (
            &[
                "GET",
                "POST",
                "M-SEARCH",
                "EXTENSION-METHOD-LONGER-THAN-16",
                "G\rT",
                "",
            ],
            2,
        );
        const LINES: Pieces = (
            &[
                "content-length: 5",
                "Content-Length:5",
                "content-length:  007 \t",
                "content-length: 5 5",
                "content-length: 18446744073709551616",
                "content-length:",
                "Transfer-Encoding: chunked",
                "transfer-encoding:chunked, gzip",
                "transfer-encodingx: chunked",
                "transfer-encod: chunked",
                "host: example",
                "x-long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "x:\tv\tw",
                "content-length : 5",
                "TRANSFER-ENCODING :chunked",
                "content-length: 5\r",
                " folded",
                "no-colon",
                "x: a\rb",
            ],
            6,
        );
        const ENDS: Pieces = (&["\r\n", "\n", "\r", ""], 2);
        fn pick(rng: &mut fastrand::Rng, (pieces, invalid): Pieces) -> &'static str {
            let valid = pieces.len() - invalid;
            pieces[if rng.u8(..10) == 0 {
                rng.usize(..pieces.len())
            } else {
                rng.usize(..valid)
            }]
        }
        let rng = &mut fastrand::Rng::with_seed(7);
        let mut compared = 0;
        for _ in 0..3000 {
            let mut head = String::new();
            head.push_str(pick(rng, STARTS));
            head.push_str(pick(rng, METHODS));
            head.push_str(" /p HTTP/1.1");
            head.push_str(pick(rng, ENDS));
            for _ in 0..rng.usize(..6) {
                head.push_str(pick(rng, LINES));
                head.push_str(pick(rng, ENDS));
            }
            head.push_str(pick(rng, ENDS));
            head.push_str("GET /next HTTP/1.1\r\n\r\n");
            compared += usize::from(agrees_with_httparse(head.as_bytes()));
        }
        assert!(compared > 1000, "only {compared} heads were valid");
    }

    #[test]
    fn a_cr_without_its_lf_never_completes() {
        for bytes in [
            &b"\rGET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\rX\r\n\r\n",
        ] {
            assert_eq!(scan(bytes, bytes.len()), None);
            assert_eq!(httparse_head(bytes), None);
        }
    }

    #[test]
    fn methods_are_told_apart_beyond_the_prefix() {
        let mut long = MethodSeen::default();
        b"EXTENSION-METHOD-ONE".iter().for_each(|b| long.push(*b));
        assert!(long.is("EXTENSION-METHOD-ONE"));
        assert!(!long.is("EXTENSION-METHOD-TWO"));
        assert!(!long.is("EXTENSION-METHOD-ON"));
        let mut get = MethodSeen::default();
        b"GET".iter().for_each(|b| get.push(*b));
        assert!(get.is("GET") && !get.is("GETS") && !get.is("get"));
    }
}
