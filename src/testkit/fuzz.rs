//! The fuzz targets' bodies: one function per parser that takes any bytes, runs the product's own
//! code on them and checks what must hold whatever the input (beyond "no panic"). The cargo-fuzz
//! targets in `fuzz/` call these and nothing else, and the corpus replay test
//! (`tests/fuzz_corpus.rs`) feeds every file of `fuzz/corpus/<target>/` to the same function, so
//! what the fuzzer found stays found.

use crate::admin::api::parse_list_query;
use crate::admin::event_search::{input_time, Filter};
use crate::admin::form::{cookie, decode, decode_path, Form};
use crate::admin::html::url_encode;
use crate::event::{envelope, signature};
use crate::http::{frame_for_fuzzing, Framed};
use crate::time;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("http_framing", http_framing),
    ("stripe_signature", stripe_signature),
    ("envelope", envelope),
    ("form_query", form_query),
    ("time", time),
];

/// The HTTP framing: the first byte picks the body limit, the second seeds where the stream is
/// cut into reads. Checks that the cuts change nothing, that what is accepted is sane (a body
/// within the limit, one `Host` on HTTP/1.1, no CR or LF in a value), and that each accepted
/// request, written out again plainly, frames back to the same request.
pub fn http_framing(data: &[u8]) {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let max_body = [16, 64, 1024, 1 << 20][(limit & 3) as usize];
    let whole = frame_for_fuzzing(stream, max_body, &[]);
    let cuts = cuts(*seed, stream.len());
    assert_eq!(
        frame_for_fuzzing(stream, max_body, &cuts),
        whole,
        "cuts {cuts:?}"
    );
    for framed in &whole {
        let Framed::Request {
            method,
            path,
            query,
            minor,
            headers,
            body,
            keep_alive,
        } = framed
        else {
            continue;
        };
        assert!(body.len() <= max_body);
        assert!(*minor <= 1);
        assert!(path.starts_with('/') || path == "*", "{path:?}");
        let hosts = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .count();
        assert!(
            hosts == 1 || (hosts == 0 && *minor == 0),
            "{hosts} Host headers"
        );
        for (name, value) in headers {
            assert!(
                !name.is_empty() && !value.contains(['\r', '\n']),
                "{name:?}: {value:?}"
            );
        }
        // Written out again with a plain Content-Length, it frames to the same request (found by
        // the fuzzer: corpus file crash-reencoded-head-over-the-header-limit).
        let mut again = format!("{method} {path}");
        if !query.is_empty() {
            again.push('?');
            again.push_str(query);
        }
        again.push_str(&format!(" HTTP/1.{minor}\r\n"));
        for (name, value) in headers {
            let framing = ["content-length", "transfer-encoding"]
                .iter()
                .any(|f| name.eq_ignore_ascii_case(f));
            if !framing {
                again.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        // (No `Content-Length: 0` for an empty body: a head at the header limit would pass it.)
        if !body.is_empty() {
            again.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        again.push_str("\r\n");
        let mut bytes = again.into_bytes();
        bytes.extend_from_slice(body);
        match frame_for_fuzzing(&bytes, max_body, &[]).first() {
            Some(Framed::Request {
                method: m2,
                path: p2,
                query: q2,
                minor: v2,
                body: b2,
                keep_alive: k2,
                ..
            }) => {
                assert_eq!(
                    (m2, p2, q2, v2, b2, k2),
                    (method, path, query, minor, body, keep_alive)
                );
            }
            other => panic!(
                "re-encoded request framed as {other:?}: {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

/// Up to 8 cut offsets in `0..len`, from `seed`.
fn cuts(seed: u8, len: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..(seed % 9))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % len as u64) as usize
        })
        .collect()
}

/// `Stripe-Signature`: the input up to the first newline is the header, the rest the body.
/// Parsing and verifying never panic; a verification passes only with the real MAC in the
/// header; and what `sign` makes always verifies and parses back.
pub fn stripe_signature(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let header = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or(&[]);
    let secrets = ["whsec_fuzz_one".to_string(), "whsec_fuzz_two".to_string()];
    let parsed = signature::parse_header(&header);
    if let Ok(v) = signature::verify(Some(&header), body, &secrets, 1_700_000_000, 300) {
        let parsed = parsed.as_ref().expect("a verified header parses");
        let expected = signature::sign(body, &secrets[v.secret_index], v.timestamp);
        let want = signature::parse_header(&expected).expect("sign makes a valid header");
        assert!(parsed.v1.contains(&want.v1[0]), "verified without the MAC");
    }
    if let Ok(h) = &parsed {
        assert!(h.timestamp >= 0 && !h.v1.is_empty());
    }
    let t = parsed.map_or(1_700_000_000, |h| h.timestamp);
    let signed = signature::sign(body, &secrets[1], t);
    let verified = signature::verify(Some(&signed), body, &secrets, t, 0).expect("own signature");
    assert_eq!((verified.timestamp, verified.secret_index), (t, 1));
}

/// The event envelope: parsing never panics, and what it accepts is consistent with the body
/// (a valid id and type, `created` not negative, `data.object`'s span is that object's text, and
/// the parsed head members are that text's).
pub fn envelope(data: &[u8]) {
    let Ok(env) = envelope::parse(data) else {
        return;
    };
    assert!(!env.id.is_empty() && env.id.len() <= 255);
    assert!(!env.event_type.is_empty() && env.event_type.len() <= 255);
    assert!(env.created >= 0);
    if let Some(object) = &env.object {
        let text = env
            .object_text(data)
            .expect("the span of data.object is text in the body");
        // `object` holds the head members of the whole object (all of it if not an object). A
        // number serde_json cannot hold (1e400) outside those members is skipped unread, so the
        // event is stored, although a whole parse of its object fails.
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(mut all)) => {
                all.retain(|k, _| envelope::HEAD_MEMBERS.contains(&k.as_str()));
                assert_eq!(&serde_json::Value::Object(all), object);
            }
            Ok(other) => assert_eq!(&other, object),
            Err(e) => assert!(
                e.to_string().contains("number out of range") && object.is_object(),
                "{e}"
            ),
        }
    }
    if env.thin {
        assert!(env.object.is_none());
    }
}

/// Form bodies, query strings, cookies, the events filter and the read API's list query: no
/// panic, and every decoded pair survives encoding and decoding again.
pub fn form_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let form = Form::parse(&text);
    let _ = Form::parse_body(data);
    let _ = decode(&text);
    let _ = decode_path(&text);
    let headers = vec![("Cookie".to_string(), text.to_string())];
    let _ = cookie(&headers, "stripe_inbox_session");
    for (name, value) in &form.0 {
        let again = Form::parse(&format!("{}={}", url_encode(name), url_encode(value)));
        if !name.is_empty() || !value.is_empty() {
            assert_eq!(again.0, vec![(name.clone(), value.clone())]);
        }
    }
    let filter = Filter::from_query(&form);
    for ms in [filter.from_ms, filter.to_ms].into_iter().flatten() {
        assert!((0..=time::MAX_SECS * 1000).contains(&ms));
        let _ = input_time(ms);
    }
    let round = Filter::from_query(&Form::parse(&filter.query(filter.before)));
    assert_eq!(
        (
            &round.event_type,
            &round.object,
            &round.decision,
            &round.text,
            round.before
        ),
        (
            &filter.event_type,
            &filter.object,
            &filter.decision,
            &filter.text,
            filter.before
        )
    );
    if let Ok(list) = parse_list_query(&text) {
        assert!((1..=100).contains(&list.limit));
        // Every `?N` in the SQL names a parameter that is there.
        for clause in &list.clauses {
            for n in clause.split('?').skip(1) {
                let n: usize = n
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .expect("?N");
                assert!((1..=list.params.len()).contains(&n), "{clause}");
            }
        }
    }
}

/// The time parsers: no panic, results within years 0-9999 where promised, and a parsed RFC 3339
/// time formats and parses back to itself.
pub fn time(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(secs) = time::parse_rfc3339(&text) {
        if (0..=time::MAX_SECS).contains(&secs) {
            let formatted = time::format_utc(secs).replace(' ', "T");
            assert_eq!(time::parse_rfc3339(&formatted), Some(secs), "{formatted}");
        }
    }
    if let Some(secs) = time::parse_when(&text) {
        assert!((0..=time::MAX_SECS).contains(&secs), "{secs}");
    }
    if let Some(ms) = time::parse_duration_ms(&text) {
        assert!(ms >= 0);
    }
}
