//! A small, strict-enough HTTP/1.1 request reader and response helpers.

use bytes::{Buf, Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 32 * 1024 * 1024;

pub(crate) struct Request {
    pub method: String,
    pub path: String,
    pub http10: bool,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection may be reused after the reply.
    pub fn keep_alive(&self) -> bool {
        if self.http10 {
            self.header_has_token("connection", "keep-alive")
        } else {
            !self.header_has_token("connection", "close")
        }
    }
}

pub(crate) enum ReadError {
    /// The client closed the connection (EOF or error), at or before the
    /// start of a request or in the middle of one.
    Closed,
    /// The request is malformed: answer with this status and close.
    Bad(u16, String),
}

fn bad(msg: impl Into<String>) -> ReadError {
    ReadError::Bad(400, msg.into())
}

/// Reads one request from `io`, using and refilling `buf` (bytes after the
/// request stay in `buf`).
pub(crate) async fn read_request<S>(io: &mut S, buf: &mut BytesMut) -> Result<Request, ReadError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Tolerate empty lines before the request line (RFC 9112 §2.2).
    let (head_len, head) = loop {
        while buf.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
            buf.advance(1);
        }
        if let Some(end) = find_head_end(buf) {
            break (end, parse_head(&buf[..end])?);
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad(
                431,
                "request header section too large".into(),
            ));
        }
        fill(io, buf).await?;
    };
    let mut req = head;
    buf.advance(head_len);
    let chunked = match req.header("transfer-encoding") {
        Some(te) => match te.rsplit(',').next().map(str::trim) {
            Some(last) if last.eq_ignore_ascii_case("chunked") => true,
            _ => return Err(bad(format!("unsupported transfer-encoding {te:?}"))),
        },
        None => false,
    };
    let length = if chunked {
        None
    } else {
        let mut length = None;
        for (_, v) in req.headers.iter().filter(|(k, _)| k == "content-length") {
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| bad("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting content-length headers"));
            }
            length = Some(n);
        }
        if length.is_some_and(|n| n > MAX_BODY) {
            return Err(ReadError::Bad(413, "request body too large".into()));
        }
        Some(length.unwrap_or(0))
    };
    let needs_body = length != Some(0);
    if needs_body && !req.http10 && req.header_has_token("expect", "100-continue") {
        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| ReadError::Closed)?;
    }
    req.body = match length {
        Some(n) => {
            while buf.len() < n {
                fill(io, buf).await?;
            }
            // A copy, not a view: a view would keep the connection's whole
            // read buffer alive for as long as the journal keeps the body.
            let body = Bytes::copy_from_slice(&buf[..n]);
            buf.advance(n);
            body
        }
        None => loop {
            if let Some((body, used)) = parse_chunked(buf)? {
                buf.advance(used);
                break body;
            }
            if buf.len() > MAX_BODY + MAX_HEAD {
                return Err(ReadError::Bad(413, "request body too large".into()));
            }
            fill(io, buf).await?;
        },
    };
    Ok(req)
}

async fn fill<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> Result<(), ReadError> {
    buf.reserve(8 * 1024);
    match io.read_buf(buf).await {
        Ok(0) | Err(_) => Err(ReadError::Closed),
        Ok(_) => Ok(()),
    }
}

/// Finds the line at `from` in `buf`: `(line without EOL, index after EOL)`.
fn line_at(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let nl = buf[from..].iter().position(|&b| b == b'\n')? + from;
    let line = &buf[from..nl];
    Some((line.strip_suffix(b"\r").unwrap_or(line), nl + 1))
}

/// The length of the head including its terminating empty line.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let (line, next) = line_at(buf, pos)?;
        if line.is_empty() {
            return Some(next);
        }
        pos = next;
    }
}

fn parse_head(head: &[u8]) -> Result<Request, ReadError> {
    let text = std::str::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line {request_line:?}")));
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !token(method) || !token(path) {
        return Err(bad(format!("malformed request line {request_line:?}")));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(bad(format!("unsupported version {version:?}"))),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("malformed header line {line:?}")));
        };
        if !token(name) {
            return Err(bad(format!("malformed header name {name:?}")));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        http10,
        headers,
        body: Bytes::new(),
    })
}

/// Decodes a complete chunked body at the start of `buf`: `(body, bytes
/// used)`, or `None` if more input is needed.
fn parse_chunked(buf: &[u8]) -> Result<Option<(Bytes, usize)>, ReadError> {
    let mut body = BytesMut::new();
    let mut pos = 0;
    loop {
        let Some((line, next)) = line_at(buf, pos) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(line).map_err(|_| bad("bad chunk size line"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| bad(format!("bad chunk size {size_hex:?}")))?;
        if size > MAX_BODY || body.len() + size > MAX_BODY {
            return Err(ReadError::Bad(413, "request body too large".into()));
        }
        pos = next;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some((line, next)) = line_at(buf, pos) else {
                    return Ok(None);
                };
                pos = next;
                if line.is_empty() {
                    return Ok(Some((body.freeze(), pos)));
                }
            }
        }
        if buf.len() < pos + size {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        match line_at(buf, pos) {
            None => return Ok(None),
            Some(([], next)) => pos = next,
            Some(_) => return Err(bad("chunk data not followed by CRLF")),
        }
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// A complete response with a `content-length` body.
pub(crate) fn full_response(
    status: u16,
    extra: &[(&str, String)],
    content_type: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status:03} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A provider-shaped (OpenAI) JSON error body for `status`.
pub(crate) fn error_body(status: u16, message: Option<&str>) -> Vec<u8> {
    let (kind, code) = match status {
        400 => ("invalid_request_error", "invalid_request"),
        401 => ("invalid_request_error", "invalid_api_key"),
        403 => ("permission_error", "forbidden"),
        404 => ("invalid_request_error", "not_found"),
        408 => ("timeout_error", "request_timeout"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("requests", "rate_limit_exceeded"),
        500 => ("server_error", "internal_error"),
        502 => ("server_error", "bad_gateway"),
        503 => ("server_error", "service_unavailable"),
        504 => ("server_error", "gateway_timeout"),
        529 => ("server_error", "overloaded"),
        _ if status >= 500 => ("server_error", "server_error"),
        _ => ("api_error", "api_error"),
    };
    let message = message
        .map(str::to_owned)
        .unwrap_or_else(|| format!("Mock provider error {status} {}", reason(status)));
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arbitrary bytes never panic the parsers.
    #[test]
    fn parsers_survive_garbage() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"0123456789abcdefxyz;: \r\n\r\n{}\"data:[DONE]\xff\xc3";
        for _ in 0..20_000 {
            let len = (seed % 48) as usize;
            let mut input = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                input.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let _ = find_head_end(&input);
            let _ = parse_head(&input);
            let _ = parse_chunked(&input);
            let events = crate::sse::split_events(&input);
            let _ = crate::sse::transform(&events, true, true);
            let _ = crate::sse::completion_from_events(&events);
        }
    }

    #[test]
    fn chunked_decoding() {
        let b = b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\nNEXT";
        let (body, used) = parse_chunked(b).ok().flatten().unwrap();
        assert_eq!(&body[..], b"abcde");
        assert_eq!(&b[used..], b"NEXT");
        assert!(parse_chunked(b"3\r\nab").ok().unwrap().is_none());
        assert!(parse_chunked(b"zz\r\n").is_err());
    }
}
