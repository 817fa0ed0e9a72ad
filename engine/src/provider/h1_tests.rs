use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Decodes `body` fed in pieces cut at `cuts`: the data, and whether the
/// body ended.
fn decode_split(body: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), ChunkError> {
    let mut c = Chunked::default();
    let mut data = Vec::new();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&x| x.min(body.len())).collect();
    ends.sort_unstable();
    ends.push(body.len());
    for end in ends {
        let mut piece = body[at..end].to_vec();
        let d = c.decode(&mut piece)?;
        data.extend_from_slice(&piece[..d.data]);
        at = end;
        if c.is_done() {
            break;
        }
    }
    Ok((data, c.is_done()))
}

/// `data` chunked into pieces of `sizes` (cycled), with the last chunk.
fn chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let body = b"5\r\nhello\r\n7;name=\"v\"\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
    assert_eq!(
        decode_split(body, &[]).unwrap(),
        (b"hello, world".to_vec(), true)
    );
    // Upper-case hex and whitespace before an extension.
    let body = b"A \t;x\r\n0123456789\r\n0\r\n\r\n";
    assert_eq!(
        decode_split(body, &[]).unwrap(),
        (b"0123456789".to_vec(), true)
    );
    // Not ended yet: no terminal chunk.
    assert_eq!(
        decode_split(b"3\r\nabc\r\n", &[]).unwrap(),
        (b"abc".to_vec(), false)
    );
}

#[test]
fn bytes_after_the_last_chunk_are_not_consumed() {
    let mut c = Chunked::default();
    let mut buf = b"2\r\nok\r\n0\r\n\r\nHTTP/1.1".to_vec();
    let d = c.decode(&mut buf).unwrap();
    assert!(c.is_done());
    assert_eq!((d.data, d.consumed), (2, 12));
    assert_eq!(&buf[..2], b"ok");
}

#[test]
fn malformed_chunked_framing_is_an_error() {
    for (body, err) in [
        (&b"zz\r\n"[..], ChunkError::Size),
        (b"\r\n", ChunkError::Size),
        (b"3\nabc", ChunkError::Size),
        (b"3;ext\nabc", ChunkError::Size),
        (b"3\r\nabcX", ChunkError::DataEnd),
        (b"3\r\nabc\rX", ChunkError::DataEnd),
        (b"1000000000000000\r\n", ChunkError::TooLarge),
        (b"0\r\nbad\n", ChunkError::Trailer),
        (b"0\r\n\rX", ChunkError::Trailer),
    ] {
        assert_eq!(decode_split(body, &[]), Err(err), "{body:?}");
    }
    let long_ext = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_META + 1]].concat();
    assert_eq!(decode_split(&long_ext, &[]), Err(ChunkError::MetaTooLong));
}

#[test]
fn the_extension_bound_is_per_chunk_not_per_body() {
    // A stream with an extension on every chunk, far past the bound in
    // total, decodes whole.
    let ext = "x".repeat(MAX_CHUNK_META / 2);
    let mut body = Vec::new();
    for _ in 0..8 {
        body.extend_from_slice(format!("2;{ext}\r\nok\r\n").as_bytes());
    }
    body.extend_from_slice(format!("0;{ext}\r\n\r\n").as_bytes());
    assert_eq!(decode_split(&body, &[]).unwrap(), (b"ok".repeat(8), true));
}

proptest! {
    /// Any chunking of any data, cut into reads anywhere, decodes to the
    /// data and ends exactly once.
    #[test]
    fn any_split_of_a_chunked_body_decodes_the_same(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        sizes in proptest::collection::vec(1usize..70, 1..6),
        cuts in proptest::collection::vec(0usize..1200, 0..12),
    ) {
        let body = chunked(&data, &sizes);
        prop_assert_eq!(decode_split(&body, &cuts).unwrap(), (data, true));
    }
}

fn head(text: &str) -> (Head, Framing, bool, usize) {
    parse_head(text.as_bytes())
        .unwrap()
        .expect("a complete head")
}

#[test]
fn heads_give_status_headers_framing_and_keep_alive() {
    let text = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\ndata";
    let (h, framing, keep_alive, len) = head(text);
    assert_eq!(h.status, 200);
    assert_eq!(h.headers["content-type"], "text/event-stream");
    assert!(matches!(framing, Framing::Chunked(_)));
    assert!(keep_alive);
    assert_eq!(&text[len..], "data");

    let (_, framing, keep_alive, _) = head("HTTP/1.1 429 Too Many\r\ncontent-length: 12\r\n\r\n");
    assert!(matches!(framing, Framing::Length(12)));
    assert!(keep_alive);
    // Only HTTP/1.1 without `Connection: close` is reused.
    for text in [
        "HTTP/1.1 200 OK\r\nconnection: Upgrade, Close\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
        // Read until the server closes.
        "HTTP/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        // A length beside chunked is ignored, and the connection dropped.
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
    ] {
        assert!(!head(text).2, "{text}");
    }
    assert!(matches!(
        head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").1,
        Framing::Chunked(_)
    ));
    assert!(matches!(
        head("HTTP/1.1 204 No Content\r\n\r\n").1,
        Framing::Length(0)
    ));
    assert!(head("HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").2);
}

#[test]
fn incomplete_and_invalid_heads() {
    assert!(
        parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none()
    );
    assert!(parse_head(b"").unwrap().is_none());
    for bad in [
        &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
    ] {
        assert!(
            matches!(parse_head(bad), Err(ProviderError::Malformed(_))),
            "{bad:?}"
        );
    }
    // Repeated equal lengths are one length.
    assert!(matches!(
        head("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n").1,
        Framing::Length(3)
    ));
}

/// A connected client `Connection` and the server's socket.
async fn pair() -> (Connection, TcpStream) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (Connection::new(Io::Plain(client)), server)
}

/// The whole body of the current response, read in reads of `READ_CHUNK`
/// into one buffer that starts out as garbage (the engine's is
/// uninitialized), so that nothing can rely on a zeroed buffer.
async fn body(conn: &mut Connection) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    let mut buf = vec![0xA5u8; READ_CHUNK];
    let mut read = ReadBuf::new(&mut buf);
    while let Some(n) = std::future::poll_fn(|cx| conn.poll_body(cx, &mut read)).await? {
        out.extend_from_slice(&read.filled()[..n]);
    }
    Ok(out)
}

fn reusable(conn: &mut Connection) -> bool {
    conn.poll_reusable(&mut Context::from_waker(std::task::Waker::noop()))
}

#[tokio::test]
async fn a_response_split_anywhere_is_read_and_the_connection_reused() {
    let (mut conn, mut server) = pair().await;
    conn.write(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut req = [0u8; 19];
    server.read_exact(&mut req).await.unwrap();
    let response =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let server_side = tokio::spawn(async move {
        // One byte at a time: heads and chunk lines arrive in pieces.
        for b in response {
            server.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        server
    });
    let h = conn.read_head().await.unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(body(&mut conn).await.unwrap(), b"hello world");
    let mut server = server_side.await.unwrap();
    assert!(reusable(&mut conn));

    // A second exchange, head and body in one write: what follows the head
    // is handed out from the bytes read with it.
    conn.write(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
    server.read_exact(&mut req).await.unwrap();
    server
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcd")
        .await
        .unwrap();
    conn.read_head().await.unwrap();
    assert_eq!(body(&mut conn).await.unwrap(), b"abcd");
    assert!(reusable(&mut conn));
    // The server closes the idle connection: no longer usable.
    drop(server);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!reusable(&mut conn));
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_bytes_past_its_end_forbid_reuse() {
    let (mut conn, mut server) = pair().await;
    server
        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
        .await
        .unwrap();
    drop(server);
    conn.read_head().await.unwrap();
    let err = body(&mut conn).await.unwrap_err();
    assert!(matches!(err, ProviderError::Io(m) if m.contains("before the response body ended")));
    assert!(!reusable(&mut conn));

    let (mut conn, mut server) = pair().await;
    server
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")
        .await
        .unwrap();
    conn.read_head().await.unwrap();
    assert_eq!(body(&mut conn).await.unwrap(), b"ok");
    assert!(!reusable(&mut conn));

    // Until-close bodies end at the close and never leave a reusable connection.
    let (mut conn, mut server) = pair().await;
    server
        .write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        .await
        .unwrap();
    drop(server);
    conn.read_head().await.unwrap();
    assert_eq!(body(&mut conn).await.unwrap(), b"all of it");
    assert!(!reusable(&mut conn));
}

#[tokio::test]
async fn heads_that_never_end_or_never_come_are_errors() {
    let (mut conn, mut server) = pair().await;
    let writer = tokio::spawn(async move {
        let _ = server.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = format!("x-filler: {}\r\n", "a".repeat(1000));
        for _ in 0..80 {
            if server.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    assert!(matches!(
        conn.read_head().await,
        Err(ProviderError::Malformed(m)) if m.contains("longer than")
    ));
    drop(conn);
    let _ = writer.await;

    let (mut conn, server) = pair().await;
    drop(server);
    assert!(matches!(
        conn.read_head().await,
        Err(ProviderError::Io(m)) if m.contains("closed before the response")
    ));
}
