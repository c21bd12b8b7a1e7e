//! A hand-driven HTTP/2 app (h2c with prior knowledge) that writes frames
//! no library client lets a test write: floods of control frames, header
//! blocks built byte by byte (HPACK literals, dynamic-table references,
//! table size updates), stream IDs out of order, DATA that disagrees with
//! `content-length`. It reads what the proxy answers as frames
//! ([`AppFrame`]) and tells the answer to a stream ([`Answer`]) or the
//! connection's end ([`goaway_error`]).
//!
//! Frame building is [`super::h2_wire`]'s; this adds the client side.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::h2_wire::{ACK, SETTINGS, frame};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types the tests write or read beyond [`super::h2_wire`]'s.
pub const DATA: u8 = 0x0;
pub const RST_STREAM: u8 = 0x3;
pub const PING: u8 = 0x6;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// HTTP/2 error codes (RFC 9113 §7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const STREAM_CLOSED: u32 = 0x5;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// An HPACK integer with an `prefix`-bit prefix, the first byte's other
/// bits set to `flags` (RFC 7541 §5.1).
pub fn hpack_int(flags: u8, prefix: u32, value: usize) -> Vec<u8> {
    let max = (1usize << prefix) - 1;
    if value < max {
        return vec![flags | value as u8];
    }
    let mut out = vec![flags | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_str(s: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(0, 7, s.len());
    out.extend_from_slice(s);
    out
}

/// A field as a literal without indexing, with a new name.
pub fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_str(name.as_bytes()));
    out.extend(hpack_str(value.as_bytes()));
    out
}

/// A field as a literal with incremental indexing (it enters the dynamic
/// table, index 62 when it is the newest), with a new name.
pub fn literal_indexed(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    out.extend(hpack_str(name.as_bytes()));
    out.extend(hpack_str(value.as_bytes()));
    out
}

/// A reference to entry `index` of the static or dynamic table.
pub fn indexed(index: usize) -> Vec<u8> {
    hpack_int(0x80, 7, index)
}

/// A dynamic table size update to `size` (RFC 7541 §6.3).
pub fn table_size_update(size: usize) -> Vec<u8> {
    hpack_int(0x20, 5, size)
}

/// The pseudo-header fields of a request (`:scheme http`), as literals.
pub fn request_fields(method: &str, path: &str, authority: &str) -> Vec<u8> {
    [
        literal(":method", method),
        literal(":scheme", "http"),
        literal(":path", path),
        literal(":authority", authority),
    ]
    .concat()
}

/// A HEADERS frame with END_HEADERS (and END_STREAM when `end_stream`).
pub fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(super::h2_wire::HEADERS, flags, stream, block)
}

/// A DATA frame.
pub fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, bytes)
}

/// One frame the proxy sent.
#[derive(Clone, Debug)]
pub struct AppFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// What the proxy did with one stream, told by the frames it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A response head with this status.
    Status(u16),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// Nothing (yet).
    Nothing,
}

/// The first answer to `stream` among `frames`.
pub fn answer(frames: &[AppFrame], stream: u32) -> Answer {
    for frame in frames.iter().filter(|f| f.stream == stream) {
        match frame.kind {
            super::h2_wire::HEADERS => {
                if let Some(status) = status_of(&frame.payload) {
                    return Answer::Status(status);
                }
            }
            RST_STREAM => return Answer::Reset(code(&frame.payload)),
            _ => {}
        }
    }
    Answer::Nothing
}

/// The error code of the GOAWAY among `frames`, if one came.
pub fn goaway_error(frames: &[AppFrame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == super::h2_wire::GOAWAY)
        .map(|f| code(f.payload.get(4..).unwrap_or_default()))
}

fn code(payload: &[u8]) -> u32 {
    payload
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// `:status` of a response header block: the first field, as h2 writes it
/// (an indexed static entry, or a literal with indexed name 8, its value
/// Huffman-coded digits).
fn status_of(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    let statuses = [
        (8, 200),
        (9, 204),
        (10, 206),
        (11, 304),
        (12, 400),
        (13, 404),
        (14, 500),
    ];
    if first & 0x80 != 0 {
        let index = first & 0x7f;
        return statuses.iter().find(|(i, _)| *i == index).map(|(_, s)| *s);
    }
    // Literal with indexed name `:status` (index 8 in any literal form).
    if first & 0x0f != 8 && first & 0x3f != 8 {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(2..2 + len)?;
    let digits = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// Decode a Huffman-coded string of ASCII digits (RFC 7541 Appendix B:
/// `0`-`2` are 5-bit codes 0-2, `3`-`9` 6-bit codes 25-31).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    while bits.len() - at >= 5 {
        let five = bits[at..at + 5].iter().fold(0u8, |v, b| v << 1 | b);
        if five <= 2 {
            out.push(char::from(b'0' + five));
            at += 5;
        } else if bits.len() - at >= 6 {
            let six = bits[at..at + 6].iter().fold(0u8, |v, b| v << 1 | b);
            if !(25..=31).contains(&six) {
                break;
            }
            out.push(char::from(b'0' + six - 22));
            at += 6;
        } else {
            break;
        }
    }
    Some(out)
}

/// One h2c connection to the proxy, driven frame by frame.
pub struct H2App {
    pub tcp: TcpStream,
    read: Vec<u8>,
}

impl H2App {
    /// Connect, send the preface, empty SETTINGS and the ACK of the
    /// proxy's (so that its limits apply from the first stream).
    pub async fn connect(addr: SocketAddr) -> H2App {
        H2App::start(TcpStream::connect(addr).await.expect("connect")).await
    }

    /// As [`H2App::connect`], with a receive buffer of about `bytes`: an
    /// app that does not read fills it, and then the proxy's socket, soon.
    pub async fn connect_small_buffer(addr: SocketAddr, bytes: u32) -> H2App {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        H2App::start(socket.connect(addr).await.expect("connect")).await
    }

    async fn start(mut tcp: TcpStream) -> H2App {
        tcp.set_nodelay(true).expect("nodelay");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(frame(SETTINGS, ACK, 0, &[]));
        tcp.write_all(&hello).await.expect("preface");
        H2App {
            tcp,
            read: Vec::new(),
        }
    }

    /// Write `bytes`; an error when the proxy closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    /// Write `bytes`, `false` when the write does not finish `within`
    /// (the proxy stopped reading) or fails (it closed).
    pub async fn send_within(&mut self, bytes: &[u8], within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.tcp.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Read until `done` holds for the frames so far, the proxy closes, or
    /// `within` passes; the frames, and whether it closed.
    pub async fn read_until(
        &mut self,
        within: Duration,
        done: impl Fn(&[AppFrame]) -> bool,
    ) -> (Vec<AppFrame>, bool) {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(frame) = self.take_frame() {
                frames.push(frame);
            }
            if done(&frames) {
                return (frames, false);
            }
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    while let Some(frame) = self.take_frame() {
                        frames.push(frame);
                    }
                    return (frames, true);
                }
                Ok(Ok(n)) => self.read.extend_from_slice(&chunk[..n]),
                Err(_) => return (frames, false),
            }
        }
    }

    fn take_frame(&mut self) -> Option<AppFrame> {
        let buf = &mut self.read;
        if buf.len() < 9 {
            return None;
        }
        let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
        if buf.len() < 9 + len {
            return None;
        }
        let frame = AppFrame {
            kind: buf[3],
            flags: buf[4],
            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
            payload: buf[9..9 + len].to_vec(),
        };
        buf.drain(..9 + len);
        Some(frame)
    }
}
