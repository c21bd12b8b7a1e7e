//! Where a chunked request body ends, found as hyper's decoder finds it.
//!
//! [`super::framing`]'s tap follows a chunked body (RFC 9112 §7.1) through
//! the bytes hyper reads, without decoding it, to know where the next
//! request head starts: a chunk-size line (`httparse::parse_chunk_size`,
//! hyper's own parser), that many data bytes skipped by counting, CRLF, …,
//! the last chunk (size `0`), trailer fields, an empty line.
//!
//! The tap must never end a body where hyper does not, so each boundary is
//! found by hyper's rules: a size line ends at its first LF (hyper refuses a
//! bare LF in one), and the trailer section ends at the first CRLF that
//! starts a line (hyper reads a bare LF as part of a trailer field; on its
//! own, `httparse::parse_headers` would end the section at a blank line of
//! bare LFs, where hyper reads on). The trailer section is then checked with
//! `httparse::parse_headers`, as hyper checks it. Whatever the tap cannot
//! read as hyper does (also what hyper refuses, after which hyper reads no
//! further request) is [`Lost`].
//!
//! Cost: data bytes are counted, never copied; a size line is parsed where
//! it lies. Only a size line split across reads, and a trailer section, are
//! copied into the caller's scratch buffer, whose capacity is reused.

/// Most bytes of a size line or trailer section the tap keeps. hyper
/// refuses 16 KiB of chunk extensions in one body and 16 KiB of trailer
/// fields (its defaults, which sidekey keeps); the slack covers a size
/// line's digits and whitespace.
pub const MAX_LINE: usize = 16 * 1024 + 256;

/// Most trailer fields: hyper's limit (its default `max_headers`).
const MAX_TRAILERS: usize = 100;

/// The tap could not follow the body as hyper reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Lost;

/// How far [`Chunked::follow`] got.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every byte belonged to the body, which goes on.
    More,
    /// The body ended after this many of the bytes.
    Ended(usize),
}

/// Where in a chunked body the bytes read so far end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chunked {
    /// In a chunk-size line (its start is in the scratch buffer when an
    /// earlier read ended inside it).
    #[default]
    Size,
    /// Data bytes of the current chunk still to come.
    Data(u64),
    /// The CR after a chunk's data is next.
    DataCr,
    /// The LF after a chunk's data is next.
    DataLf,
    /// After the last chunk or a trailer field: a trailer field or the final
    /// empty line starts.
    LineStart,
    /// In a trailer field, up to its CR (the section so far is in the
    /// scratch buffer).
    Trailer,
    /// The LF ending a trailer field is next.
    TrailerLf,
    /// The LF of the final empty line is next.
    EndLf,
}

impl Chunked {
    /// Follow the next `bytes` read of the body. `scratch` holds a size line
    /// or trailer section across calls; it is empty when a body starts and
    /// when it ends.
    pub fn follow(&mut self, bytes: &[u8], scratch: &mut Vec<u8>) -> Result<Progress, Lost> {
        let mut at = 0;
        while let Some(&byte) = bytes.get(at) {
            let rest = &bytes[at..];
            match *self {
                Chunked::Size => {
                    let Some(lf) = rest.iter().position(|b| *b == b'\n') else {
                        keep(scratch, rest)?;
                        return Ok(Progress::More);
                    };
                    let line = &rest[..=lf];
                    if scratch.len() + line.len() > MAX_LINE {
                        return Err(Lost);
                    }
                    let size = if scratch.is_empty() {
                        chunk_size(line)?
                    } else {
                        keep(scratch, line)?;
                        let size = chunk_size(scratch)?;
                        scratch.clear();
                        size
                    };
                    at += line.len();
                    *self = match size {
                        0 => Chunked::LineStart,
                        size => Chunked::Data(size),
                    };
                }
                Chunked::Data(left) => {
                    let skip = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    at += skip;
                    *self = match left - skip as u64 {
                        0 => Chunked::DataCr,
                        left => Chunked::Data(left),
                    };
                }
                Chunked::DataCr => {
                    expect(byte, b'\r')?;
                    at += 1;
                    *self = Chunked::DataLf;
                }
                Chunked::DataLf => {
                    expect(byte, b'\n')?;
                    at += 1;
                    *self = Chunked::Size;
                }
                Chunked::LineStart => {
                    at += 1;
                    if byte == b'\r' {
                        if !scratch.is_empty() {
                            keep(scratch, b"\r")?;
                        }
                        *self = Chunked::EndLf;
                    } else {
                        keep(scratch, &[byte])?;
                        *self = Chunked::Trailer;
                    }
                }
                Chunked::Trailer => {
                    let Some(cr) = rest.iter().position(|b| *b == b'\r') else {
                        keep(scratch, rest)?;
                        return Ok(Progress::More);
                    };
                    keep(scratch, &rest[..=cr])?;
                    at += cr + 1;
                    *self = Chunked::TrailerLf;
                }
                Chunked::TrailerLf => {
                    expect(byte, b'\n')?;
                    keep(scratch, b"\n")?;
                    at += 1;
                    *self = Chunked::LineStart;
                }
                Chunked::EndLf => {
                    expect(byte, b'\n')?;
                    at += 1;
                    if !scratch.is_empty() {
                        keep(scratch, b"\n")?;
                        trailers(scratch)?;
                        scratch.clear();
                    }
                    *self = Chunked::Size;
                    return Ok(Progress::Ended(at));
                }
            }
        }
        Ok(Progress::More)
    }
}

/// Append `bytes` to `scratch`, within [`MAX_LINE`].
fn keep(scratch: &mut Vec<u8>, bytes: &[u8]) -> Result<(), Lost> {
    if scratch.len() + bytes.len() > MAX_LINE {
        return Err(Lost);
    }
    scratch.extend_from_slice(bytes);
    Ok(())
}

fn expect(byte: u8, wanted: u8) -> Result<(), Lost> {
    if byte == wanted { Ok(()) } else { Err(Lost) }
}

/// The size on a complete size line (up to and including its first LF).
/// hyper wants a digit first, which httparse does not.
fn chunk_size(line: &[u8]) -> Result<u64, Lost> {
    if !line.first().is_some_and(u8::is_ascii_hexdigit) {
        return Err(Lost);
    }
    match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((len, size))) if len == line.len() => Ok(size),
        _ => Err(Lost),
    }
}

/// The trailer section (fields and final empty line) must be header fields
/// through its last byte, as hyper parses it.
fn trailers(section: &[u8]) -> Result<(), Lost> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((len, _))) if len == section.len() => Ok(()),
        _ => Err(Lost),
    }
}

#[cfg(test)]
mod tests {
    use super::{Chunked, Lost, MAX_LINE, Progress};

    /// Follow `stream` in reads of `piece` bytes; where the body ended.
    fn follow_in_pieces(stream: &[u8], piece: usize) -> Result<Option<usize>, Lost> {
        let mut chunked = Chunked::default();
        let mut scratch = Vec::new();
        let mut offset = 0;
        for read in stream.chunks(piece) {
            if let Progress::Ended(used) = chunked.follow(read, &mut scratch)? {
                assert!(scratch.is_empty(), "scratch is left empty");
                return Ok(Some(offset + used));
            }
            offset += read.len();
        }
        Ok(None)
    }

    /// Where the body at the start of `stream` ends, the same for every way
    /// of splitting it into reads.
    fn end_of(stream: &[u8]) -> Result<Option<usize>, Lost> {
        let whole = follow_in_pieces(stream, stream.len().max(1));
        for piece in 1..stream.len() {
            assert_eq!(follow_in_pieces(stream, piece), whole, "reads of {piece}");
        }
        whole
    }

    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\n\r\n";

    fn body_then_next(body: &[u8]) -> (Vec<u8>, Result<Option<usize>, Lost>) {
        let stream = [body, NEXT].concat();
        let end = end_of(&stream);
        (stream, end)
    }

    #[test]
    fn ends_after_the_last_chunk_whatever_the_reads() {
        for body in [
            &b"0\r\n\r\n"[..],
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n000\r\n\r\n",
            b"a\r\n0\r\n\r\n0\r\n\r\n\r\n0\r\n\r\n",
            // extensions, with whitespace and quoted `;` and CR-less bytes
            b"3;name=value;q=\"a;b\"\r\nabc\r\n2 ; x\r\nde\r\n0;last\r\n\r\n",
            b"3\t\r\nabc\r\n0 \r\n\r\n",
            // trailer fields
            b"3\r\nabc\r\n0\r\nx-checksum: 1234\r\nx-more: a\r\n\r\n",
            b"0\r\nx-empty:\r\n\r\n",
        ] {
            let (_, end) = body_then_next(body);
            assert_eq!(
                end,
                Ok(Some(body.len())),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        for body in [
            &b""[..],
            b"5",
            b"5\r\nhel",
            b"5\r\nhello",
            b"5\r\nhello\r",
            b"0\r\n",
            b"0\r\nx-sum: 1\r\n",
            b"0\r\nx-sum: 1\r\n\r",
        ] {
            assert_eq!(
                end_of(body),
                Ok(None),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn what_hyper_reads_differently_or_refuses_is_lost() {
        for body in [
            // size lines
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\n0\r\n\r\n",
            b";x\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\nhello\r\n0\r\n\r\n",
            // hyper reads 17 digits with leading zeros; httparse does not
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            // data not followed by CRLF
            b"5\r\nhelloXY0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            // the end
            b"0\r\n\rX",
            b"0\r\n\n\r\n",
            // trailers httparse refuses
            b"0\r\nno colon\r\n\r\n",
            b"0\r\nx-a: 1\r\n folded\r\n\r\n",
            b"0\r\nx-a: 1\rX\r\n\r\n",
            // a bare LF in a trailer: httparse ends the section at the blank
            // line, hyper reads the GET line as part of its trailers
            b"0\r\nx-sum: 1\n\nGET /hidden HTTP/1.1\r\nhost: a\r\n\r\n",
        ] {
            let (_, end) = body_then_next(body);
            assert_eq!(end, Err(Lost), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn long_size_lines_and_trailers_are_bounded() {
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(MAX_LINE));
        assert_eq!(follow_in_pieces(long_ext.as_bytes(), 1000), Err(Lost));
        let long_trailer = format!("0\r\nx-big: {}\r\n\r\n", "v".repeat(MAX_LINE));
        assert_eq!(follow_in_pieces(long_trailer.as_bytes(), 1000), Err(Lost));
        let mut many = String::from("0\r\n");
        for i in 0..=super::MAX_TRAILERS {
            many.push_str(&format!("x-{i}: {i}\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(follow_in_pieces(many.as_bytes(), 1000), Err(Lost));
        // Within the bounds: a long extension and a trailer of 8 KiB.
        let fine = format!(
            "5;{}\r\nhello\r\n0\r\nx-big: {}\r\n\r\n",
            "e".repeat(8 * 1024),
            "v".repeat(8 * 1024)
        );
        assert_eq!(
            follow_in_pieces(fine.as_bytes(), 1000),
            Ok(Some(fine.len()))
        );
    }

    #[test]
    fn huge_chunks_are_counted_not_kept() {
        let mut chunked = Chunked::default();
        let mut scratch = Vec::new();
        assert_eq!(
            chunked.follow(b"fffffffffffffff\r\n", &mut scratch),
            Ok(Progress::More)
        );
        assert_eq!(chunked, Chunked::Data(0xfff_ffff_ffff_ffff));
        let data = vec![0u8; 64 * 1024];
        for _ in 0..16 {
            assert_eq!(chunked.follow(&data, &mut scratch), Ok(Progress::More));
        }
        assert_eq!(chunked, Chunked::Data(0xfff_ffff_ffff_ffff - 1024 * 1024));
        assert_eq!(scratch.capacity(), 0, "nothing was copied");
    }
}
