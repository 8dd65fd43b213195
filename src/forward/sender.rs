//! The POST to the app: the stored event's bytes exactly as Stripe sent them, signed for the app
//! in Stripe's own scheme with the destination's secret at send time, over `ureq` with the
//! destination's per-attempt time limit. It returns what happened ([`Answer`]); what that means is
//! [`super::schedule`]'s business.
//!
//! Redirects are not followed (a POST body is not sent somewhere else unasked; a 3xx is a failed
//! attempt, as for Stripe), and proxies from the environment are not used: the app is usually on
//! the same machine or network, where an `HTTP_PROXY` meant for the outside world would only get
//! in the way.

use std::io::Read;
use std::time::Duration;

use crate::event::signature;

/// The `User-Agent` of every forwarded request.
pub const USER_AGENT: &str = concat!(
    "stripe-inbox/",
    env!("CARGO_PKG_VERSION"),
    " (forwarded from a Stripe webhook inbox)"
);

/// How much of an error answer's body is kept, for the attempt's short error.
const ERROR_BODY_CHARS: usize = 200;
/// How much of an answer's body is read at all (the rest is dropped with the connection).
const READ_BODY_BYTES: u64 = 64 * 1024;

/// The headers of one attempt, in order: the body is signed with `secret` at `now_secs`.
pub fn headers(
    body: &[u8],
    secret: &str,
    now_secs: i64,
    attempt: i64,
    decision: &str,
    event_id: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json; charset=utf-8".into()),
        ("User-Agent", USER_AGENT.into()),
        ("Stripe-Signature", signature::sign(body, secret, now_secs)),
        ("Stripe-Inbox-Attempt", attempt.to_string()),
        ("Stripe-Inbox-Decision", decision.into()),
        ("Idempotency-Key", event_id.into()),
    ]
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status, when the app answered.
    pub status: Option<u16>,
    /// The answer's `Retry-After`, as sent.
    pub retry_after: Option<String>,
    /// A short reason: the transport error, or for a non-2xx the start of the answer's body.
    pub error: Option<String>,
}

/// POSTs to one destination.
pub struct Sender {
    agent: ureq::Agent,
    url: String,
    timeout: Duration,
}

impl Sender {
    pub fn new(url: &str, timeout: Duration) -> Sender {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(USER_AGENT)
            .build()
            .into();
        Sender {
            agent,
            url: url.to_string(),
            timeout,
        }
    }

    /// One attempt.
    pub fn post(&self, body: &[u8], headers: &[(&'static str, String)]) -> Answer {
        let mut request = self.agent.post(&self.url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.send(body) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                // Read the answer (bounded), so the connection can be used again.
                let mut text = Vec::new();
                let read = response
                    .body_mut()
                    .as_reader()
                    .take(READ_BODY_BYTES)
                    .read_to_end(&mut text);
                let error = if (200..300).contains(&status) {
                    None
                } else {
                    Some(status_error(status, &text))
                };
                match read {
                    Err(e) if (200..300).contains(&status) => {
                        log::debug!("forward: reading a 2xx answer's body failed: {e}");
                    }
                    _ => {}
                }
                Answer {
                    status: Some(status),
                    retry_after,
                    error,
                }
            }
            Err(e) => Answer {
                status: None,
                retry_after: None,
                error: Some(transport_error(&e, self.timeout)),
            },
        }
    }
}

/// `HTTP 409: {"error":"cart locked"}`: the status and the start of the body, on one line.
fn status_error(status: u16, body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_BODY_CHARS)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

/// A transport failure in a few words.
fn transport_error(e: &ureq::Error, timeout: Duration) -> String {
    let text = match e {
        ureq::Error::Timeout(_) => format!("timed out after {:.1} s", timeout.as_secs_f64()),
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
            std::io::ErrorKind::TimedOut => {
                format!("timed out after {:.1} s", timeout.as_secs_f64())
            }
            _ => format!("connection: {io}"),
        },
        ureq::Error::HostNotFound => "host not found".to_string(),
        other => other.to_string(),
    };
    text.chars().take(ERROR_BODY_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn headers_sign_the_exact_body_with_the_destination_secret() {
        let body = b"{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}";
        let h = headers(
            body,
            "whsec_test_secret",
            1_700_000_000,
            3,
            "applied",
            "evt_test_webhook",
        );
        let names: Vec<&str> = h.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "User-Agent",
                "Stripe-Signature",
                "Stripe-Inbox-Attempt",
                "Stripe-Inbox-Decision",
                "Idempotency-Key"
            ]
        );
        // The vector computed independently with python and node (stripe-facts.md §1).
        assert_eq!(
            h[2].1,
            "t=1700000000,v1=4f1cd7feda9826e746b7d482c4badebb657398df1099e1046364f6196a230150"
        );
        assert_eq!(h[0].1, "application/json; charset=utf-8");
        assert!(h[1]
            .1
            .starts_with(&format!("stripe-inbox/{}", env!("CARGO_PKG_VERSION"))));
        assert_eq!((h[3].1.as_str(), h[4].1.as_str()), ("3", "applied"));
    }

    /// A one-shot server on a free port that answers `answer` and hands back what it read.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                    break;
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
            got
        });
        (url, t)
    }

    #[test]
    fn posts_the_body_and_reads_status_retry_after_and_error() {
        let (url, t) = serve_once(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"busy\":\n\"yes\"}\n",
        );
        let sender = Sender::new(&url, Duration::from_secs(5));
        let body = br#"{"id":"evt_1","object":"event"}"#;
        let answer = sender.post(body, &headers(body, "whsec_x", 1, 1, "applied", "evt_1"));
        let got = String::from_utf8(t.join().unwrap()).unwrap();
        assert!(got.starts_with("POST /hook HTTP/1.1\r\n"), "{got}");
        assert!(
            got.ends_with("\r\n\r\n{\"id\":\"evt_1\",\"object\":\"event\"}"),
            "{got}"
        );
        assert!(
            got.to_ascii_lowercase()
                .contains("idempotency-key: evt_1\r\n"),
            "{got}"
        );
        assert_eq!(answer.status, Some(429));
        assert_eq!(answer.retry_after.as_deref(), Some("7"));
        assert_eq!(
            answer.error.as_deref(),
            Some("HTTP 429: {\"busy\": \"yes\"}")
        );
    }

    #[test]
    fn no_answer_is_a_short_transport_error() {
        // A port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sender = Sender::new(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2));
        let answer = sender.post(b"{}", &[]);
        assert_eq!(answer.status, None);
        assert_eq!(answer.error.as_deref(), Some("connection refused"));
        // A server that never answers: the attempt's time limit.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = Sender::new(
            &format!("http://{}/", listener.local_addr().unwrap()),
            Duration::from_millis(300),
        );
        let started = std::time::Instant::now();
        let answer = sender.post(b"{}", &[]);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(answer.status, None);
        assert!(answer.error.unwrap().starts_with("timed out"));
        drop(listener);
        // A redirect is an answer, not followed.
        let (url, t) = serve_once(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
        );
        let answer = Sender::new(&url, Duration::from_secs(5)).post(b"{}", &[]);
        t.join().unwrap();
        assert_eq!(answer.status, Some(302));
    }
}
