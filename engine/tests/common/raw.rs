//! One HTTP/1.1 exchange over std's blocking `TcpStream`, for the tests
//! that drive the real binary from plain threads.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

/// Sends one request (`Connection: close`) with `headers` (each
/// `Name: value`) and returns the whole response as text, head included.
pub fn exchange(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A response's status code.
pub fn status(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A response's body.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}
