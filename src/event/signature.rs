//! Stripe's webhook signature scheme: parse `Stripe-Signature`, verify, and sign (for tests,
//! `send-test-event` and, later, forwarding).
//!
//! The header is `t=<unix secs>,v1=<hex>[,v1=<hex>...][,v0=<hex>]` in any order. The signed payload
//! is `"<t>." + raw body bytes`, the MAC is HMAC-SHA256 keyed with the UTF-8 bytes of the whole
//! secret, `whsec_` prefix included (not base64-decoded). Only `v1` counts: `v0` and unknown schemes
//! are ignored so that a downgrade is impossible. Every `v1` is tried against every configured
//! secret, because during a secret roll Stripe sends one `v1` per active secret. Comparison is
//! constant time. The signature is checked before the timestamp, as the official node and python
//! libraries do, so a "too old" verdict means the sender really knew the secret and the clock is
//! the likely culprit. The tolerance applies in both directions (as stripe-php and stripe-dotnet do).
//!
//! Pure: the clock is passed in, nothing is logged here.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::crypto::{self, to_hex};

/// Why a request's signature was rejected; mirrors stripe-go's four sentinel errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// There is no `Stripe-Signature` header (or it is empty, or there are several).
    Missing,
    /// The header has no usable `t=` timestamp.
    Malformed,
    /// The header has no well-formed `v1` signature at all (only `v0`, or only junk).
    NoV1,
    /// No `v1` matches the body under any configured secret.
    NoMatch,
    /// A `v1` matches, but the timestamp is `offset_secs` away from now (positive: in the past).
    OutsideTolerance {
        offset_secs: i64,
        tolerance_secs: i64,
    },
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Missing => write!(f, "no Stripe-Signature header"),
            SignatureError::Malformed => {
                write!(
                    f,
                    "unable to extract timestamp and signatures from Stripe-Signature header"
                )
            }
            SignatureError::NoV1 => write!(f, "no signatures found with expected scheme v1"),
            SignatureError::NoMatch => {
                write!(
                    f,
                    "no signatures found matching the expected signature for payload"
                )
            }
            SignatureError::OutsideTolerance {
                offset_secs,
                tolerance_secs,
            } => {
                let dir = if *offset_secs >= 0 {
                    "in the past"
                } else {
                    "in the future"
                };
                write!(
                    f,
                    "timestamp outside the tolerance zone: {}s {dir} (tolerance {tolerance_secs}s)",
                    offset_secs.abs()
                )
            }
        }
    }
}

/// A successful verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The header's `t`.
    pub timestamp: i64,
    /// Which secret matched (its index in the list passed to [`verify`]).
    pub secret_index: usize,
}

/// The parsed header: the timestamp and every well-formed `v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub timestamp: i64,
    pub v1: Vec<[u8; 32]>,
}

/// Parses a `Stripe-Signature` value. Malformed `v1` values are skipped (a junk `v1` next to a good
/// one must not spoil it); unknown keys and `v0` are ignored.
pub fn parse_header(value: &str) -> Result<Header, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    let mut saw_v1_key = false;
    for pair in value.split(',') {
        let Some((key, val)) = pair.trim().split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" => match val.trim().parse::<i64>() {
                Ok(t) if t >= 0 => timestamp = Some(t),
                _ => return Err(SignatureError::Malformed),
            },
            "v1" => {
                saw_v1_key = true;
                if let Some(sig) = decode_hex32(val.trim()) {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        // `v1=junk` alone is as good as no v1 at all, but say "no match" for it as node does,
        // since the scheme was present.
        return Err(if saw_v1_key {
            SignatureError::NoMatch
        } else {
            SignatureError::NoV1
        });
    }
    Ok(Header { timestamp, v1 })
}

/// Verifies a request: `header` is the `Stripe-Signature` value (None when absent), `body` the raw
/// bytes as received, `now` the current unix time.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now: i64,
    tolerance_secs: i64,
) -> Result<Verified, SignatureError> {
    let header = header
        .filter(|h| !h.trim().is_empty())
        .ok_or(SignatureError::Missing)?;
    let parsed = parse_header(header)?;
    let mut matched = None;
    for (index, secret) in secrets.iter().enumerate() {
        let expected = mac(secret, parsed.timestamp, body);
        // Check every candidate without stopping early, so timing says nothing about which matched.
        let mut any = false;
        for candidate in &parsed.v1 {
            any |= crypto::ct_eq(&expected, candidate);
        }
        if any && matched.is_none() {
            matched = Some(index);
        }
    }
    let secret_index = matched.ok_or(SignatureError::NoMatch)?;
    let offset_secs = now - parsed.timestamp;
    if offset_secs.abs() > tolerance_secs {
        return Err(SignatureError::OutsideTolerance {
            offset_secs,
            tolerance_secs,
        });
    }
    Ok(Verified {
        timestamp: parsed.timestamp,
        secret_index,
    })
}

/// Makes a `Stripe-Signature` header value for `body`, as Stripe would.
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    format!("t={timestamp},v1={}", to_hex(&mac(secret, timestamp, body)))
}

/// HMAC-SHA256 of `"<t>.<body>"` keyed with the secret's bytes.
fn mac(secret: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stripe's own vector: stripe-dotnet's event_test_signature.json, secret `webhook_secret`.
    const DOTNET_BODY: &[u8] = include_bytes!("../../tests/fixtures/event_test_signature.json");
    const DOTNET_T: i64 = 1533204620;
    const DOTNET_V1: &str = "2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7";
    const DOTNET_V0: &str = "63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef";

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn dotnet_header() -> String {
        format!("t={DOTNET_T},v1={DOTNET_V1},v0={DOTNET_V0}")
    }

    #[test]
    fn stripe_dotnet_vector() {
        assert_eq!(DOTNET_BODY.len(), 484);
        let s = secrets(&["webhook_secret"]);
        let ok = verify(Some(&dotnet_header()), DOTNET_BODY, &s, DOTNET_T + 100, 300);
        assert_eq!(
            ok,
            Ok(Verified {
                timestamp: DOTNET_T,
                secret_index: 0
            })
        );
        let late = verify(Some(&dotnet_header()), DOTNET_BODY, &s, DOTNET_T + 400, 300);
        assert_eq!(
            late,
            Err(SignatureError::OutsideTolerance {
                offset_secs: 400,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            sign(DOTNET_BODY, "webhook_secret", DOTNET_T),
            format!("t={DOTNET_T},v1={DOTNET_V1}")
        );
    }

    #[test]
    fn independently_computed_vector() {
        let body = b"{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}";
        assert_eq!(
            sign(body, "whsec_test_secret", 1700000000),
            "t=1700000000,v1=4f1cd7feda9826e746b7d482c4badebb657398df1099e1046364f6196a230150"
        );
    }

    #[test]
    #[allow(clippy::type_complexity)] // One scenario table, read row by row.
    fn scenarios() {
        let body = br#"{"id":"evt_1","object":"event"}"#;
        let t = 1_700_000_000;
        let good = sign(body, "whsec_a", t);
        let other = sign(body, "whsec_other", t);
        let other_v1 = other.split_once(",v1=").unwrap().1;
        let good_v1 = good.split_once(",v1=").unwrap().1;
        use SignatureError::*;
        let cases: Vec<(
            &str,
            Option<String>,
            &[&str],
            i64,
            Result<usize, SignatureError>,
        )> = vec![
            ("good", Some(good.clone()), &["whsec_a"], t, Ok(0)),
            ("missing", None, &["whsec_a"], t, Err(Missing)),
            ("empty", Some(String::new()), &["whsec_a"], t, Err(Missing)),
            (
                "bad_header",
                Some("bad_header".into()),
                &["whsec_a"],
                t,
                Err(Malformed),
            ),
            (
                "t not a number",
                Some(format!("t=abc,v1={good_v1}")),
                &["whsec_a"],
                t,
                Err(Malformed),
            ),
            (
                "no t",
                Some(format!("v1={good_v1}")),
                &["whsec_a"],
                t,
                Err(Malformed),
            ),
            (
                "v1=bad_signature",
                Some(format!("t={t},v1=bad_signature")),
                &["whsec_a"],
                t,
                Err(NoMatch),
            ),
            (
                "only v0",
                Some(format!("t={t},v0={good_v1}")),
                &["whsec_a"],
                t,
                Err(NoV1),
            ),
            (
                "unknown scheme",
                Some(format!("t={t},v2={good_v1}")),
                &["whsec_a"],
                t,
                Err(NoV1),
            ),
            (
                "good + v1=potato",
                Some(format!("{good},v1=potato")),
                &["whsec_a"],
                t,
                Ok(0),
            ),
            (
                "potato first",
                Some(format!("t={t},v1=potato,v1={good_v1}")),
                &["whsec_a"],
                t,
                Ok(0),
            ),
            (
                "order free",
                Some(format!("v0=00,v1={good_v1},t={t}")),
                &["whsec_a"],
                t,
                Ok(0),
            ),
            (
                "spaces",
                Some(format!("t={t}, v1={good_v1}")),
                &["whsec_a"],
                t,
                Ok(0),
            ),
            (
                "wrong secret",
                Some(good.clone()),
                &["whsec_b"],
                t,
                Err(NoMatch),
            ),
            (
                "trailing space in secret",
                Some(good.clone()),
                &["whsec_a "],
                t,
                Err(NoMatch),
            ),
            (
                "uppercase hex",
                Some(
                    good.to_uppercase()
                        .replace("T=", "t=")
                        .replace("V1=", "v1="),
                ),
                &["whsec_a"],
                t,
                Ok(0),
            ),
            (
                "rolled: two v1, old secret",
                Some(format!("{good},v1={other_v1}")),
                &["whsec_a"],
                t,
                Ok(0),
            ),
            (
                "rolled: two v1, new secret",
                Some(format!("{good},v1={other_v1}")),
                &["whsec_other"],
                t,
                Ok(0),
            ),
            (
                "several secrets, second",
                Some(good.clone()),
                &["whsec_x", "whsec_a"],
                t,
                Ok(1),
            ),
            (
                "several secrets, none",
                Some(good.clone()),
                &["whsec_x", "whsec_y"],
                t,
                Err(NoMatch),
            ),
            (
                "edge of tolerance",
                Some(good.clone()),
                &["whsec_a"],
                t + 300,
                Ok(0),
            ),
            (
                "too old",
                Some(good.clone()),
                &["whsec_a"],
                t + 301,
                Err(OutsideTolerance {
                    offset_secs: 301,
                    tolerance_secs: 300,
                }),
            ),
            (
                "from the future",
                Some(good.clone()),
                &["whsec_a"],
                t - 301,
                Err(OutsideTolerance {
                    offset_secs: -301,
                    tolerance_secs: 300,
                }),
            ),
            (
                "wrong body beats old time",
                Some(sign(b"other", "whsec_a", t)),
                &["whsec_a"],
                t + 9999,
                Err(NoMatch),
            ),
        ];
        for (name, header, list, now, want) in cases {
            let got =
                verify(header.as_deref(), body, &secrets(list), now, 300).map(|v| v.secret_index);
            assert_eq!(got, want, "case {name:?}");
        }
    }

    #[test]
    fn body_is_compared_byte_for_byte() {
        let body = b"{\"id\": \"evt_1\"}\n";
        let header = sign(body, "whsec_a", 10);
        assert!(verify(
            Some(&header),
            b"{\"id\": \"evt_1\"}",
            &secrets(&["whsec_a"]),
            10,
            300
        )
        .is_err());
        assert!(verify(Some(&header), body, &secrets(&["whsec_a"]), 10, 300).is_ok());
    }

    #[test]
    fn messages_read_like_stripes() {
        assert_eq!(
            SignatureError::OutsideTolerance {
                offset_secs: -42,
                tolerance_secs: 300
            }
            .to_string(),
            "timestamp outside the tolerance zone: 42s in the future (tolerance 300s)"
        );
        assert!(SignatureError::NoMatch
            .to_string()
            .starts_with("no signatures found matching"));
    }
}
