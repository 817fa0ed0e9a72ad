//! The HTTP/1.1 client's response parsing (`provider/h1.rs`): response
//! heads with every framing header in every shape, checked against the
//! RFC 9112 framing rules; chunked bodies cut anywhere and decoded in
//! place; and the same bodies with random damage.

use proptest::prelude::*;
use sluice::provider::fuzzing::{ChunkedDecoder, HeadSummary, parse_response_head};

/// Parses a head and checks what holds for any bytes: a complete head is
/// never longer than the buffer and none of its prefixes is complete.
pub fn check_head(buf: &[u8]) -> Result<Result<Option<HeadSummary>, String>, TestCaseError> {
    let res = parse_response_head(buf);
    match &res {
        Ok(Some(head)) => {
            prop_assert!(head.len <= buf.len());
            for end in 0..head.len {
                let prefix = parse_response_head(&buf[..end]);
                prop_assert!(
                    prefix == Ok(None),
                    "prefix of {end} bytes gave {prefix:?}, the whole head {head:?}"
                );
            }
        }
        Ok(None) => {}
        Err(msg) => prop_assert!(!msg.is_empty() && !msg.contains('\n')),
    }
    Ok(res)
}

/// Feeds `body` in the pieces `cuts` make, each decoded in its own buffer
/// as the connection does: `(data, done, bytes consumed, error)`.
pub fn decode_pieces(body: &[u8], cuts: &[usize]) -> (Vec<u8>, bool, usize, Option<String>) {
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
    points.extend([0, body.len()]);
    points.sort_unstable();
    points.dedup();
    let mut dec = ChunkedDecoder::new();
    let (mut data, mut consumed) = (Vec::new(), 0);
    for w in points.windows(2) {
        let mut buf = body[w[0]..w[1]].to_vec();
        match dec.decode(&mut buf) {
            Ok((n, used)) => {
                assert!(
                    n <= used && used <= buf.len(),
                    "decode reported {n} data of {used} used of {}",
                    buf.len()
                );
                data.extend_from_slice(&buf[..n]);
                consumed += used;
                if dec.is_done() {
                    return (data, true, consumed, None);
                }
                assert_eq!(used, buf.len(), "bytes left over before the body's end");
            }
            Err(e) => return (data, false, consumed, Some(e)),
        }
    }
    (data, false, consumed, None)
}

/// Any split of `body` decodes as the whole does; with an error, the data
/// each gave is a prefix of the other's.
pub fn check_chunked(body: &[u8], cuts_list: &[Vec<usize>]) -> Result<(), TestCaseError> {
    let whole = decode_pieces(body, &[]);
    for cuts in cuts_list {
        let split = decode_pieces(body, cuts);
        prop_assert_eq!(&split.3, &whole.3, "error differs with cuts {:?}", cuts);
        if whole.3.is_none() {
            prop_assert_eq!(&split, &whole, "a split changed the body (cuts {:?})", cuts);
        } else {
            let (a, b) = (&split.0, &whole.0);
            let n = a.len().min(b.len());
            prop_assert_eq!(&a[..n], &b[..n]);
        }
    }
    Ok(())
}

fn crlf() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just("\r\n"), 1 => Just("\n")]
}

/// A header line in one of the shapes that matter for framing.
fn header() -> impl Strategy<Value = (String, String)> {
    let coding = prop_oneof![
        Just("chunked"),
        Just("CHUNKED"),
        Just("gzip"),
        Just("identity"),
        Just(""),
        Just(" chunked "),
    ];
    let te = proptest::collection::vec(coding, 1..4).prop_map(|c| c.join(","));
    let cl = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..100).prop_map(|n| n.to_string()),
        (0u64..100).prop_map(|n| format!("{n}, {n}")),
        Just("1, 2".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("0x10".to_string()),
        Just("".to_string()),
        Just("+5".to_string()),
    ];
    let connection = prop_oneof![
        Just("close"),
        Just("keep-alive"),
        Just("Keep-Alive, Close"),
        Just("upgrade")
    ];
    prop_oneof![
        2 => (prop_oneof![Just("Transfer-Encoding"), Just("transfer-encoding")], te).prop_map(|(n, v)| (n.to_string(), v)),
        2 => (prop_oneof![Just("Content-Length"), Just("content-length")], cl).prop_map(|(n, v)| (n.to_string(), v)),
        1 => connection.prop_map(|v| ("Connection".to_string(), v.to_string())),
        2 => ("[A-Za-z-]{1,12}", "[ -~]{0,20}"),
        1 => ("[ -~]{0,6}", "[\\x00-\\xff]{0,8}"),
    ]
}

/// A response head: `(bytes, status, http/1.1, header lines)`.
fn head() -> impl Strategy<Value = (Vec<u8>, u16, bool, Vec<(String, String)>)> {
    (
        prop_oneof![6 => Just("HTTP/1.1"), 2 => Just("HTTP/1.0"), 1 => Just("HTTP/2"), 1 => Just("http/1.1")],
        prop_oneof![
            proptest::sample::select(&[100u16, 101, 103, 200, 204, 206, 304, 400, 429, 500, 503][..]),
            100u16..1000,
        ],
        "[ -~]{0,12}",
        proptest::collection::vec(header(), 0..6),
        crlf(),
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(version, status, reason, headers, eol, body)| {
            let mut text = format!("{version} {status} {reason}{eol}");
            for (n, v) in &headers {
                text.push_str(&format!("{n}: {v}{eol}"));
            }
            text.push_str(eol);
            let mut bytes = text.into_bytes();
            bytes.extend(body);
            (bytes, status, version == "HTTP/1.1", headers)
        })
}

/// What RFC 9112 section 6.3 says of a head whose header lines all arrived
/// intact: `Err(())` for an invalid `Content-Length`.
fn expected_framing(
    status: u16,
    http11: bool,
    headers: &[(String, String)],
) -> Result<(String, bool), ()> {
    let items = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let close = items("connection")
        .iter()
        .any(|t| t.eq_ignore_ascii_case("close"));
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let (framing, clean) = if (100..200).contains(&status) || status == 204 || status == 304 {
        ("length 0".to_string(), true)
    } else if has("transfer-encoding") {
        let chunked = items("transfer-encoding")
            .iter()
            .rfind(|t| !t.is_empty())
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        if chunked {
            ("chunked".to_string(), !has("content-length"))
        } else {
            ("close".to_string(), false)
        }
    } else if has("content-length") {
        let mut length: Option<u64> = None;
        for part in items("content-length") {
            let n = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
        (
            format!("length {}", length.expect("a content-length header")),
            true,
        )
    } else {
        ("close".to_string(), false)
    };
    Ok((framing, clean && http11 && !close))
}

#[test]
fn response_heads_are_framed_by_the_rules() {
    crate::check(file!(), 1, head(), |(bytes, status, http11, headers)| {
        let res = check_head(&bytes)?;
        // Only heads whose every line is one the parser must keep as
        // written are compared with the rules.
        let intact = headers.iter().all(|(n, v)| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && v.bytes().all(|b| (b' '..=b'~').contains(&b))
        });
        if let (Ok(Some(head)), true) = (&res, intact) {
            prop_assert_eq!(head.status, status);
            match expected_framing(status, http11, &headers) {
                Ok((framing, keep_alive)) => {
                    prop_assert_eq!(&head.framing, &framing);
                    prop_assert_eq!(head.keep_alive, keep_alive);
                }
                Err(()) => prop_assert!(false, "an invalid content-length was accepted: {head:?}"),
            }
        }
        if let (Err(_), true, true) = (&res, intact, bytes.starts_with(b"HTTP/1.")) {
            let expected = expected_framing(status, http11, &headers);
            prop_assert!(
                expected.is_err(),
                "a valid head was refused: {res:?}, expected {expected:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn any_bytes_are_a_head_or_an_error() {
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        head()
            .prop_flat_map(|(bytes, ..)| {
                let len = bytes.len();
                (
                    Just(bytes),
                    proptest::collection::vec((0..len.max(1), any::<u8>()), 1..4),
                )
            })
            .prop_map(|(mut bytes, edits)| {
                for (at, b) in edits {
                    if let Some(slot) = bytes.get_mut(at) {
                        *slot = b;
                    }
                }
                bytes
            }),
    ];
    crate::check(file!(), 1, strategy, |bytes| {
        let _ = check_head(&bytes)?;
        Ok(())
    });
}

/// A chunked body: `(encoded, data, end)`, where `end` is where the body
/// ends in `encoded` (anything after it is the next response).
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, usize)> {
    let chunk = (
        proptest::collection::vec(any::<u8>(), 1..300),
        any::<bool>(),
        0usize..4,
        prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\t ")],
        prop_oneof![4 => Just(String::new()), 1 => ";[a-z]{1,5}(=[!-~]{0,10})?"],
    );
    (
        proptest::collection::vec(chunk, 0..8),
        prop_oneof![3 => Just(String::new()), 1 => ";last"],
        proptest::collection::vec("[A-Za-z-]{1,8}: [ -~]{0,16}", 0..3),
        prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 1..20)],
    )
        .prop_map(|(chunks, last_ext, trailers, after)| {
            let (mut encoded, mut data) = (Vec::new(), Vec::new());
            for (bytes, upper, zeros, space, ext) in chunks {
                let size = format!("{}{:x}", "0".repeat(zeros), bytes.len());
                let size = if upper { size.to_uppercase() } else { size };
                encoded.extend(format!("{size}{space}{ext}\r\n").into_bytes());
                encoded.extend(&bytes);
                encoded.extend(b"\r\n");
                data.extend(bytes);
            }
            encoded.extend(format!("0{last_ext}\r\n").into_bytes());
            for t in trailers {
                encoded.extend(format!("{t}\r\n").into_bytes());
            }
            encoded.extend(b"\r\n");
            let end = encoded.len();
            encoded.extend(after);
            (encoded, data, end)
        })
}

fn splits(len: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
    proptest::collection::vec(proptest::collection::vec(0..=len, 0..24), 1..4)
}

#[test]
fn chunked_bodies_decode_in_place_under_any_split() {
    let strategy = chunked_body().prop_flat_map(|(encoded, data, end)| {
        let len = encoded.len();
        (Just(encoded), Just(data), Just(end), splits(len))
    });
    crate::check(file!(), 1, strategy, |(encoded, data, end, cuts_list)| {
        for cuts in &cuts_list {
            let (got, done, consumed, err) = decode_pieces(&encoded, cuts);
            prop_assert_eq!(err, None);
            prop_assert!(done, "the body did not end");
            prop_assert_eq!(&got, &data);
            // Bytes past the end are left for the next response: the
            // piece holding the end reports only what it used.
            let piece_end = cuts
                .iter()
                .copied()
                .filter(|&c| c >= end)
                .min()
                .unwrap_or(encoded.len());
            prop_assert!(consumed <= piece_end && consumed >= end.min(piece_end));
        }
        Ok(())
    });
}

#[test]
fn damaged_chunked_bodies_fail_the_same_under_any_split() {
    let strategy = chunked_body()
        .prop_flat_map(|(encoded, ..)| {
            let len = encoded.len();
            (
                Just(encoded),
                proptest::collection::vec((0..len, any::<u8>(), 0u8..3), 1..4),
            )
        })
        .prop_map(|(mut encoded, edits)| {
            for (at, b, op) in edits {
                let at = at.min(encoded.len().saturating_sub(1));
                match op {
                    0 if at < encoded.len() => encoded[at] = b,
                    1 => encoded.insert(at, b),
                    _ if at < encoded.len() => {
                        encoded.remove(at);
                    }
                    _ => {}
                }
            }
            encoded
        })
        .prop_flat_map(|encoded| {
            let len = encoded.len();
            (Just(encoded), splits(len))
        });
    crate::check(file!(), 1, strategy, |(encoded, cuts_list)| {
        check_chunked(&encoded, &cuts_list)
    });
}

#[test]
fn any_bytes_decode_the_same_under_any_split() {
    let strategy = proptest::collection::vec(
        prop_oneof![4 => any::<u8>(), 1 => Just(b'\r'), 1 => Just(b'\n'), 1 => Just(b'0'), 1 => Just(b';')],
        0..400,
    )
    .prop_flat_map(|bytes| {
        let len = bytes.len();
        (Just(bytes), splits(len))
    });
    crate::check(file!(), 1, strategy, |(bytes, cuts_list)| {
        check_chunked(&bytes, &cuts_list)
    });
}
