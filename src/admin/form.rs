//! `application/x-www-form-urlencoded` and query strings, and request cookies: the little of URL
//! and cookie syntax the admin pages need. Pure.
//!
//! Decoding is lenient in the way browsers are: `+` is a space, a malformed `%` escape is kept as
//! it is, and bytes that are not UTF-8 are replaced. Values are never trusted further than that:
//! every page validates what it uses and escapes what it shows.

/// Decoded `name=value` pairs, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// Parses `a=1&b=x+y&c=%2F`.
    pub fn parse(text: &str) -> Form {
        Form(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(name), decode(value))
                })
                .collect(),
        )
    }

    /// Parses a request body (a form POST); a body that is not UTF-8 gives an empty form.
    pub fn parse_body(body: &[u8]) -> Form {
        std::str::from_utf8(body)
            .map(Form::parse)
            .unwrap_or_default()
    }

    /// The first value of `name`, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The first value of `name` exactly as sent (not trimmed), for passwords.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decodes one component, `+` as a space.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let digit = |at: usize| bytes.get(at).copied().and_then(hex);
                match (digit(i + 1), digit(i + 2)) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-decodes a path segment (`+` stays a plus).
pub fn decode_path(s: &str) -> String {
    decode(&s.replace('+', "%2B"))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The value of cookie `name` in the request's `Cookie` header(s).
pub fn cookie<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_like_browsers() {
        let form = Form::parse("a=1&b=x+y&c=%2Fz%C3%A9&d&e=%zz&f=%4&password=+p%20&&");
        assert_eq!(form.get("a"), Some("1"));
        assert_eq!(form.get("b"), Some("x y"));
        assert_eq!(form.get("c"), Some("/zé"));
        assert_eq!(form.get("d"), None);
        assert_eq!(form.get("e"), Some("%zz"));
        assert_eq!(form.get("f"), Some("%4"));
        assert_eq!(form.raw("password"), Some(" p "));
        assert_eq!(form.get("missing"), None);
        assert!(Form::parse_body(&[0xff, b'=', b'1']).0.is_empty());
        assert_eq!(decode_path("a+b%2B"), "a+b+");
    }

    #[test]
    fn cookies_by_name() {
        let headers = vec![
            ("Host".to_string(), "x".to_string()),
            ("Cookie".to_string(), "a=1; si=abc; b=\"q\"".to_string()),
            ("cookie".to_string(), "c=3".to_string()),
        ];
        assert_eq!(cookie(&headers, "si"), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("q"));
        assert_eq!(cookie(&headers, "c"), Some("3"));
        assert_eq!(cookie(&headers, "s"), None);
    }
}
