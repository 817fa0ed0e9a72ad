//! One HTTP/1.1 client connection to a provider: write a request, read the
//! response head, then the body as it arrives, with its framing (chunked,
//! `Content-Length` or until close) removed.
//!
//! Why not hyper's client connection: it allocates about 17 KiB before its
//! first byte (a 32-slot request channel block and an 8 KiB header
//! buffer), and keeps an 8 KiB or larger read buffer for as long as it
//! lives. A gateway holding 10,000 slow streams would spend 250 MB on
//! them. A [`Connection`] holds no buffer while it waits: the caller reads
//! into a buffer of its own (on the stack), the framing is removed in
//! place, and only bytes read past a response head wait here until the
//! body is read. Heads are parsed with `httparse`, as hyper does.
//!
//! The client side is small on purpose: one request at a time, no
//! pipelining, no upgrades, no request bodies other than a fixed buffer.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::ProviderError;

/// Bytes read from the socket at a time: a caller's buffer of this size
/// holds any event a provider sends in one read.
pub(super) const READ_CHUNK: usize = 8 * 1024;
/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a response head.
const MAX_HEADERS: usize = 128;
/// Longest extension on one chunk, or trailer section, accepted.
const MAX_CHUNK_META: usize = 16 * 1024;

/// The socket: plain TCP or rustls TLS over it.
pub(super) enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A response's status line and headers.
#[derive(Debug)]
pub(super) struct Head {
    pub status: u16,
    pub headers: HeaderMap,
}

/// How the body of the current response ends.
#[derive(Debug)]
enum Framing {
    Chunked(Chunked),
    /// Bytes of a `Content-Length` body still to come.
    Length(u64),
    /// Until the server closes the connection.
    Close,
}

pub(super) struct Connection {
    io: Io,
    /// Bytes read past a response head, handed out before the socket is
    /// read again. Empty (and unallocated) while a body streams.
    leftover: Vec<u8>,
    /// The body being read; `None` between responses.
    body: Option<Framing>,
    /// Whether the connection may carry another request once the body is
    /// read: the response allowed it and nothing went wrong.
    reusable: bool,
}

impl Connection {
    pub(super) fn new(io: Io) -> Self {
        Connection {
            io,
            leftover: Vec::new(),
            body: None,
            reusable: true,
        }
    }

    /// Writes a whole request.
    pub(super) async fn write(&mut self, request: &[u8]) -> io::Result<()> {
        self.io.write_all(request).await?;
        self.io.flush().await
    }

    /// Reads the response head (skipping informational 1xx responses) and
    /// prepares the body for [`Connection::poll_body`].
    ///
    /// Bytes are read into the stack and only what is not yet a whole head
    /// is kept, so thousands of calls waiting for their first byte hold no
    /// read buffers.
    pub(super) async fn read_head(&mut self) -> Result<Head, ProviderError> {
        let mut buf = std::mem::take(&mut self.leftover);
        loop {
            if let Some((head, framing, keep_alive, len)) = parse_head(&buf)? {
                if (100..200).contains(&head.status) {
                    buf.drain(..len);
                    continue;
                }
                self.reusable = keep_alive;
                self.body = Some(framing);
                // The body's first bytes, in a buffer of their own size.
                self.leftover = buf[len..].to_vec();
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD {
                return Err(ProviderError::Malformed(format!(
                    "response head longer than {MAX_HEAD} bytes"
                )));
            }
            let io = &mut self.io;
            let n = std::future::poll_fn(|cx| {
                let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut read = ReadBuf::uninit(&mut tmp);
                Pin::new(&mut *io).poll_read(cx, &mut read).map_ok(|()| {
                    buf.extend_from_slice(read.filled());
                    read.filled().len()
                })
            })
            .await
            .map_err(|e| ProviderError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ProviderError::Io(
                    "connection closed before the response".into(),
                ));
            }
        }
    }

    /// Reads the next body bytes into `read` (cleared first; its memory need
    /// not be initialized, so a caller's stack buffer costs no zeroing):
    /// `Some(n)` puts `n > 0` bytes of the body at the front of
    /// `read.filled()`, `None` is the body's end. After an
    /// error the connection is not reusable.
    pub(super) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        read: &mut ReadBuf<'_>,
    ) -> Poll<Result<Option<usize>, ProviderError>> {
        loop {
            read.clear();
            let Some(framing) = self.body.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            if let Framing::Length(0) = framing {
                self.body = None;
                continue;
            }
            let n = if !self.leftover.is_empty() {
                let n = self.leftover.len().min(read.remaining());
                read.put_slice(&self.leftover[..n]);
                self.leftover.drain(..n);
                if self.leftover.is_empty() {
                    self.leftover = Vec::new();
                }
                n
            } else {
                match Pin::new(&mut self.io).poll_read(cx, read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        self.reusable = false;
                        return Poll::Ready(Err(ProviderError::Io(e.to_string())));
                    }
                    Poll::Ready(Ok(())) => read.filled().len(),
                }
            };
            if n == 0 {
                // The server closed the connection.
                self.reusable = false;
                return Poll::Ready(match self.body.take() {
                    Some(Framing::Close) | None => Ok(None),
                    Some(_) => Err(ProviderError::Io(
                        "connection closed before the response body ended".into(),
                    )),
                });
            }
            let data = match framing {
                Framing::Close => n,
                Framing::Length(left) => {
                    let take = (*left).min(n as u64) as usize;
                    *left -= take as u64;
                    if take < n {
                        // More than the declared length: not a clean end.
                        self.reusable = false;
                    }
                    take
                }
                Framing::Chunked(c) => match c.decode(read.filled_mut()) {
                    Ok(d) => {
                        if c.is_done() {
                            self.body = None;
                            if d.consumed < n {
                                self.reusable = false;
                            }
                        }
                        d.data
                    }
                    Err(e) => {
                        self.reusable = false;
                        self.body = None;
                        return Poll::Ready(Err(ProviderError::Malformed(e.to_string())));
                    }
                },
            };
            if data > 0 {
                return Poll::Ready(Ok(Some(data)));
            }
        }
    }

    /// Whether the connection may carry the next request, checked without
    /// waiting (the pool passes a no-op waker): the last response allowed
    /// it, its body is read to the end (what is left of it, typically the
    /// last chunk of a stream dropped at its end marker, is read now if it
    /// has arrived), and the server has neither closed the connection nor
    /// sent anything more.
    pub(super) fn poll_reusable(&mut self, cx: &mut Context<'_>) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 256];
        while self.reusable && self.body.is_some() {
            match self.poll_body(cx, &mut ReadBuf::uninit(&mut buf)) {
                Poll::Ready(Ok(None)) => {}
                // Body data after the end marker, or an end not yet here.
                _ => return false,
            }
        }
        if !self.reusable || !self.leftover.is_empty() {
            return false;
        }
        let mut read = ReadBuf::uninit(&mut buf[..1]);
        // Anything but "nothing to read yet" (EOF, a reset, stray bytes)
        // means the connection cannot be used.
        Pin::new(&mut self.io).poll_read(cx, &mut read).is_pending()
    }
}

/// Parses a complete response head at the start of `buf`: the head, how
/// its body is framed, whether the connection may be reused after it, and
/// the head's length. `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, Framing, bool, usize)>, ProviderError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(ProviderError::Malformed(format!(
                "invalid HTTP response head: {e}"
            )));
        }
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(name, value);
        }
    }
    let (framing, clean) = framing(status, &headers)?;
    let keep_alive = clean && http11 && !has_token(&headers, header::CONNECTION, "close");
    Ok(Some((Head { status, headers }, framing, keep_alive, len)))
}

/// How a response's body is framed (RFC 9112 section 6.3), and whether
/// its end leaves the connection usable.
fn framing(status: u16, headers: &HeaderMap) -> Result<(Framing, bool), ProviderError> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok((Framing::Length(0), true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = list_items(headers, header::TRANSFER_ENCODING).rfind(|t| !t.is_empty());
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        // A length beside a transfer coding is ignored, but such a
        // response may be an attack on intermediaries: do not reuse.
        let clean = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked(Chunked::default()), clean)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ProviderError::Malformed("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(ProviderError::Malformed(
                    "conflicting Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// The items of a comma-separated header, over all its lines, trimmed.
fn list_items(headers: &HeaderMap, name: HeaderName) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a comma-separated header holds `token` (any case).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    list_items(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChunkError {
    #[error("invalid chunk size line in a chunked body")]
    Size,
    #[error("chunk size too large in a chunked body")]
    TooLarge,
    #[error("missing CRLF after chunk data in a chunked body")]
    DataEnd,
    #[error("chunk extension or trailers too long in a chunked body")]
    MetaTooLong,
    #[error("invalid trailer section in a chunked body")]
    Trailer,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size (`digits` of them so far).
    #[default]
    Size,
    /// Whitespace after the size digits.
    SizeSpace,
    /// A chunk extension (`;name=value`), ignored.
    Extension,
    /// The LF ending a size line.
    SizeLf,
    Data,
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    Done,
}

/// What one [`Chunked::decode`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decoded {
    /// Bytes of data now at the front of the buffer.
    pub data: usize,
    /// Bytes of the buffer that belonged to the body (all of them, unless
    /// the body ended inside the buffer).
    pub consumed: usize,
}

/// A chunked transfer-coding decoder (RFC 9112 section 7.1) that removes
/// the framing in place, so any split of the bytes decodes the same and
/// nothing is buffered between calls.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: ChunkState,
    /// The size being read, then the data left of the current chunk.
    size: u64,
    digits: u8,
    /// Bytes of the current chunk's extension, then of the trailers,
    /// bounded by [`MAX_CHUNK_META`].
    meta: usize,
}

impl Chunked {
    pub(super) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes `buf` in place: the data it holds is moved to its front.
    pub(super) fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, ChunkError> {
        use ChunkState::*;
        let mut read = 0;
        let mut written = 0;
        while read < buf.len() && self.state != Done {
            if self.state == Data {
                let take = (self.size.min((buf.len() - read) as u64)) as usize;
                buf.copy_within(read..read + take, written);
                read += take;
                written += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = buf[read];
            read += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(ChunkError::TooLarge);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from(hex(b));
                    Size
                }
                (Size | SizeSpace, b' ' | b'\t') if self.digits > 0 => SizeSpace,
                (Size | SizeSpace, b';') if self.digits > 0 => Extension,
                (Size | SizeSpace | Extension, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\n') => return Err(ChunkError::Size),
                (Extension, _) => {
                    self.meta += 1;
                    if self.meta > MAX_CHUNK_META {
                        return Err(ChunkError::MetaTooLong);
                    }
                    Extension
                }
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    self.meta = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                (Size | SizeSpace | SizeLf, _) => return Err(ChunkError::Size),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (DataCr | DataLf, _) => return Err(ChunkError::DataEnd),
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | Trailer, b'\n') => return Err(ChunkError::Trailer),
                (TrailerStart | Trailer, b) => {
                    self.meta += 1;
                    if self.meta > MAX_CHUNK_META {
                        return Err(ChunkError::MetaTooLong);
                    }
                    if b == b'\r' { TrailerLf } else { Trailer }
                }
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                (TrailerLf | EndLf, _) => return Err(ChunkError::Trailer),
                // Not reached: data is taken above, and the loop stops at the end.
                (Data | Done, _) => return Err(ChunkError::Size),
            };
        }
        Ok(Decoded {
            data: written,
            consumed: read,
        })
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;

#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod fuzzing;
