//! HTML for the admin pages: escaping, the page frame, the stylesheet, formatting helpers, the
//! JSON viewer and the inline SVG chart. No template engine: pages are built with `write!` and
//! every value that came from outside (event bodies, customer names, metadata, query strings)
//! goes through [`esc`] on its way in.
//!
//! Pure: strings in, strings out. No I/O, no clock (times are passed in). The pages send a
//! `Content-Security-Policy` without `'unsafe-inline'` and without any script source, so nothing
//! here may use `<script>`, `style="..."` attributes or inline event handlers: looks come from
//! classes in [`CSS`], which is served as `/admin.css`.

use std::fmt::{self, Write as _};

pub use crate::format::{age, bytes, thousands};
use crate::mirror::{Decision, Outcome, TieRule};
use crate::time::format_utc;

/// The stylesheet, served as `/admin.css` (the only stylesheet; no fonts, no images).
pub const CSS: &str = include_str!("admin.css");

/// Text escaped for HTML element content and for double- or single-quoted attribute values.
pub struct Esc<'a>(pub &'a str);

/// Escapes `s` when displayed: `&`, `<`, `>`, `"` and `'`.
pub fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, b) in self.0.bytes().enumerate() {
            let rep = match b {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + 1;
        }
        f.write_str(&self.0[last..])
    }
}

/// Percent-encodes `s` for a query-string value or a path segment (everything but unreserved).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What the frame of every page needs to know about the viewer.
#[derive(Debug, Clone, Default)]
pub struct Frame<'a> {
    /// The CSRF token for the logout form (and any other form on the page).
    pub csrf: &'a str,
    /// Whether the viewer logged in (a logout button is shown) or the page is open (a warning).
    pub logged_in: bool,
    /// Which navigation entry is highlighted: "dashboard", "events", "objects", "deliveries".
    pub active: &'a str,
}

/// A whole page: head, navigation, then `body` (already HTML).
pub fn page(title: &str, frame: &Frame, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1500);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{} · stripe-inbox</title><link rel=\"stylesheet\" href=\"/admin.css\"></head>\
         <body><header class=\"top\"><a class=\"brand\" href=\"/\">stripe-inbox</a><nav>",
        esc(title)
    );
    for (key, href, label) in [
        ("dashboard", "/", "Dashboard"),
        ("events", "/events", "Events"),
        ("objects", "/objects", "Objects"),
        ("deliveries", "/deliveries", "Deliveries"),
    ] {
        let class = if frame.active == key {
            " class=\"on\""
        } else {
            ""
        };
        let _ = write!(out, "<a href=\"{href}\"{class}>{label}</a>");
    }
    out.push_str("</nav>");
    if frame.logged_in {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/logout\" class=\"logout\">{}<button>Log out</button></form>",
            csrf_field(frame.csrf)
        );
    }
    out.push_str("</header><main>");
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf_token\" value=\"{}\">",
        esc(token)
    )
}

/// The login page (no navigation).
pub fn login_page(csrf: &str, message: Option<&str>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>Log in · stripe-inbox</title><link rel=\"stylesheet\" href=\"/admin.css\"></head>\
         <body class=\"login\"><main><h1>stripe-inbox</h1>"
    );
    if let Some(message) = message {
        let _ = write!(out, "<p class=\"warn\">{}</p>", esc(message));
    }
    let _ = writeln!(
        out,
        "<form method=\"post\" action=\"/login\">{}\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required autofocus></label>\
         <button>Log in</button></form></main></body></html>",
        csrf_field(csrf)
    );
    out
}

/// A small page for errors and refusals (no navigation, nothing from the request echoed).
pub fn message_page(title: &str, text: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · stripe-inbox</title><link rel=\"stylesheet\" href=\"/admin.css\"></head>\
         <body class=\"login\"><main><h1>{t}</h1><p>{x}</p><p><a href=\"/\">Dashboard</a></p></main></body></html>\n",
        t = esc(title),
        x = esc(text)
    )
}

/// `2026-11-22 11:24:01Z` for unix milliseconds.
pub fn time_ms(ms: i64) -> String {
    format_utc(ms.div_euclid(1000))
}

/// A time for a table cell: date and time that each stay on one line (HTML).
pub fn time_cell(secs: i64) -> String {
    let text = format_utc(secs);
    format!(
        "<span class=\"d\">{}</span> <span class=\"t\">{}</span>",
        &text[..10],
        &text[11..]
    )
}

/// "No events match." or, when the search stopped at its budget, "No events match among the 20,000
/// events examined." (`what` is the plural noun; `examined` the noun after the count, or empty).
pub fn no_matches(body: &mut String, what: &str, limited: bool, scanned: u64, examined: &str) {
    body.push_str("<p class=\"muted\">No ");
    body.push_str(what);
    body.push_str(" match");
    if limited {
        body.push_str(" among the ");
        body.push_str(&thousands(scanned as i64));
        if !examined.is_empty() {
            body.push(' ');
            body.push_str(examined);
        }
        body.push_str(" examined");
    }
    body.push_str(".</p>");
}

/// A decision (`events.decision` as stored; `None`: not projected) as a coloured badge.
pub fn decision_badge(decision: Option<&str>) -> String {
    format!(
        "<span class=\"badge o-{}\">{}</span>",
        Outcome::of(decision).as_str(),
        esc(decision.unwrap_or("not projected"))
    )
}

/// What a stored decision means, in a sentence, for the event page.
pub fn decision_explained(decision: Option<&str>) -> &'static str {
    let Some(text) = decision else {
        return "The mirror has not looked at this event yet (it arrived before the mirror existed, or the mirror was rebuilt): replay it to project it.";
    };
    match Decision::parse(text) {
        Some(Decision::Applied) => "The event carried the newest state of its object, so the mirror now holds (or held) its data.",
        Some(Decision::CreatedIgnored) => "A *.created event about an object the mirror already had: a create never overwrites a state, because an update that arrived first is newer.",
        Some(Decision::Stale) => "The event is older (by event.created) than the state the mirror already held, so it changed nothing.",
        Some(Decision::Unchanged) => "Same second and same data as the state the mirror held: nothing to decide.",
        Some(Decision::TieResolved(TieRule::Causal)) => "Another event about the object came in the same second with different data; previous_attributes showed which state follows which.",
        Some(Decision::TieResolved(TieRule::Lifecycle)) => "Another event about the object came in the same second with different data; the one-way status order (e.g. draft < open < paid) decided.",
        Some(Decision::TieResolved(TieRule::LastArrival)) => "Another event about the object came in the same second with different data and nothing showed their order: the last arrival won and the object is flagged uncertain.",
        Some(Decision::Tombstoned) => "A *.deleted event: the object is kept as a tombstone holding its last state; nothing older or as old resurrects it.",
        Some(Decision::DeletedIgnored) => "The object was already deleted by an event as new or newer than this one, so this one was ignored.",
        Some(Decision::NoObject) => "Nothing to mirror: a thin event, an event without an object id, or a deleted stub.",
        Some(Decision::ProjectionFailed) => "The mirror could not apply this event when it arrived (the server log has the reason); the event itself is stored. Replay it once the cause is fixed.",
        None => "A decision this build does not describe.",
    }
}

/// Highlights and indents JSON text for a `<pre>`, escaping everything and linking ids.
///
/// Keeps the key order of the text (a `serde_json::Value` would sort it). String values that look
/// like Stripe ids become links: `evt_...` to its event page, other `xxx_...` to its object page.
/// Text that is not valid JSON is shown escaped as it is.
pub fn json_pretty(text: &str) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return esc(text).to_string();
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut chars = text.char_indices().peekable();
    // After '{' or ',' inside an object, the next string is a key.
    let mut stack: Vec<bool> = Vec::new();
    let mut expect_key = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some((i, c)) = chars.next() {
        match c {
            ' ' | '\n' | '\r' | '\t' => {}
            '{' | '[' => {
                let is_object = c == '{';
                // An empty container stays on one line.
                let mut look = chars.clone();
                let close = if is_object { '}' } else { ']' };
                while look.peek().is_some_and(|(_, c)| c.is_ascii_whitespace()) {
                    look.next();
                }
                if look.peek().is_some_and(|(_, n)| *n == close) {
                    chars = look;
                    chars.next();
                    out.push(c);
                    out.push(close);
                    continue;
                }
                out.push(c);
                stack.push(is_object);
                depth += 1;
                expect_key = is_object;
                newline(&mut out, depth);
            }
            '}' | ']' => {
                stack.pop();
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
                expect_key = stack.last() == Some(&true);
            }
            ':' => {
                out.push_str(": ");
            }
            '"' => {
                // Find the end of the string (the text is valid JSON).
                let mut end = i + 1;
                let mut escaped = false;
                for (j, d) in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == '"' {
                        end = j;
                        break;
                    }
                }
                let raw = &text[i..=end];
                if expect_key {
                    let _ = write!(out, "<span class=\"k\">{}</span>", esc(raw));
                    expect_key = false;
                } else {
                    let inner = &text[i + 1..end];
                    match id_link(inner) {
                        Some(href) => {
                            let _ = write!(
                                out,
                                "<span class=\"s\">\"<a href=\"{}\">{}</a>\"</span>",
                                esc(&href),
                                esc(inner)
                            );
                        }
                        None => {
                            let _ = write!(out, "<span class=\"s\">{}</span>", esc(raw));
                        }
                    }
                }
            }
            _ => {
                // A number or a literal: up to the next delimiter.
                let mut end = i + c.len_utf8();
                while let Some((j, d)) = chars.peek().copied() {
                    if matches!(d, ',' | '}' | ']' | ' ' | '\n' | '\r' | '\t') {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                let word = &text[i..end];
                let class = if word.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                    "n"
                } else {
                    "b"
                };
                let _ = write!(out, "<span class=\"{class}\">{}</span>", esc(word));
            }
        }
    }
    out
}

/// `/events/evt_...` or `/objects/cus_...` when `s` looks like a Stripe id, else `None`.
pub fn id_link(s: &str) -> Option<String> {
    let (prefix, rest) = s.split_once('_')?;
    let prefix_ok = (2..=10).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_lowercase())
        || prefix == "acct";
    // Some ids carry a second underscore part (e.g. `cs_test_...`). Ids are random, so they
    // have digits or capitals; enum values such as `charge_automatically` do not.
    let rest_ok = rest.len() >= 8
        && rest.len() <= 255
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && rest
            .bytes()
            .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    if !prefix_ok || !rest_ok {
        return None;
    }
    match prefix {
        "evt" => Some(format!("/events/{}", url_encode(s))),
        // Account ids, request ids and idempotency keys are not mirrored objects.
        "acct" | "req" => None,
        _ => Some(format!("/objects/{}", url_encode(s))),
    }
}

/// One bar of the chart: its hour (unix seconds) and a count per [`Outcome`], in the order of
/// [`Outcome::ALL`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bar {
    pub hour: i64,
    pub counts: [u64; 6],
}

/// A stacked bar chart of events per hour, as inline SVG (colours from the stylesheet). Each bar
/// has a `<title>` tooltip, so it needs no script. Hours are labelled in UTC every 6 hours.
pub fn chart_svg(bars: &[Bar]) -> String {
    const W: f64 = 960.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 44.0;
    const RIGHT: f64 = 16.0;
    const BOTTOM: f64 = 22.0;
    const TOP: f64 = 8.0;
    let max = bars
        .iter()
        .map(|b| b.counts.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let scale_max = nice_ceiling(max.max(1));
    let plot_h = H - BOTTOM - TOP;
    let slot = (W - LEFT - RIGHT) / bars.len().max(1) as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"events per hour\">"
    );
    // Grid lines and the y axis labels.
    for step in 0..=4 {
        let value = scale_max * step / 4;
        let y = TOP + plot_h - plot_h * step as f64 / 4.0;
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            thousands(value as i64)
        );
    }
    for (i, bar) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64 + 1.0;
        let width = (slot - 2.0).max(1.0);
        let total: u64 = bar.counts.iter().sum();
        let mut tip = format!(
            "{} UTC: {} events",
            hour_label(bar.hour),
            thousands(total as i64)
        );
        for (n, outcome) in bar.counts.iter().zip(Outcome::ALL) {
            if *n > 0 {
                let _ = write!(tip, ", {} {}", thousands(*n as i64), outcome.label());
            }
        }
        let _ = write!(out, "<g><title>{}</title>", esc(&tip));
        // An invisible full-height rectangle makes the tooltip easy to hit.
        let _ = write!(
            out,
            "<rect class=\"hit\" x=\"{x:.1}\" y=\"{TOP}\" width=\"{width:.1}\" height=\"{plot_h:.1}\"/>"
        );
        let mut y = TOP + plot_h;
        for (n, outcome) in bar.counts.iter().zip(Outcome::ALL) {
            let key = outcome.as_str();
            if *n == 0 {
                continue;
            }
            let h = plot_h * *n as f64 / scale_max as f64;
            y -= h;
            let _ = write!(
                out,
                "<rect class=\"o-{key}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.1}\"/>",
                h.max(0.5)
            );
        }
        out.push_str("</g>");
        if bar.hour.rem_euclid(6 * 3600) == 0 {
            let _ = write!(
                out,
                "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + width / 2.0,
                H - 6.0,
                &format_utc(bar.hour)[11..16]
            );
        }
    }
    out.push_str("</svg><p class=\"legend\">");
    for outcome in Outcome::ALL {
        let _ = write!(
            out,
            "<span class=\"sw o-{}\"></span>{} ",
            outcome.as_str(),
            outcome.label()
        );
    }
    out.push_str("</p>");
    out
}

/// `2026-11-22 11:00`.
fn hour_label(hour: i64) -> String {
    format_utc(hour)[..16].to_string()
}

/// The top of the chart's y axis: four grid steps of 1, 2 or 5 × 10^k, the smallest that
/// reaches `n`, so that every grid line's label is its exact value.
fn nice_ceiling(n: u64) -> u64 {
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            if 4 * base * m >= n {
                return 4 * base * m;
            }
        }
        base *= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XSS: &str = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>";

    #[test]
    fn escaping_covers_markup_and_both_quotes() {
        assert_eq!(
            esc(XSS).to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"
        );
        assert_eq!(esc("a & b").to_string(), "a &amp; b");
        assert_eq!(esc("plain é").to_string(), "plain é");
    }

    #[test]
    fn url_encoding_leaves_only_unreserved() {
        assert_eq!(url_encode("cus_123"), "cus_123");
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(url_encode("\"><"), "%22%3E%3C");
    }

    #[test]
    fn json_viewer_escapes_names_metadata_and_types() {
        let body = format!(
            r#"{{"id":"evt_1234567890","type":"{t}","data":{{"object":{{"id":"cus_ABCDEFGH12","name":"{n}","metadata":{{"{n}":"{n}"}}}}}}}}"#,
            t = "x\\\"<b>",
            n = "<script>alert(1)</script>"
        );
        let html = json_pretty(&body);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("<a href=\"/objects/cus_ABCDEFGH12\">cus_ABCDEFGH12</a>"));
        assert!(html.contains("<a href=\"/events/evt_1234567890\">"));
        // Key order is kept and the result is indented.
        let id = html.find("&quot;id&quot;").unwrap();
        let ty = html.find("&quot;type&quot;").unwrap();
        assert!(id < ty);
        assert!(html.contains("\n  <span class=\"k\">&quot;id&quot;</span>: "));
    }

    #[test]
    fn json_viewer_layout() {
        let html = json_pretty(r#"{"a":[1,2],"b":{},"c":[],"d":null,"e":-1.5e3,"f":"x,}"}"#);
        let text = html
            .replace("<span class=\"k\">", "")
            .replace("<span class=\"s\">", "")
            .replace("<span class=\"n\">", "")
            .replace("<span class=\"b\">", "")
            .replace("</span>", "")
            .replace("&quot;", "\"");
        assert_eq!(
            text,
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": [],\n  \"d\": null,\n  \"e\": -1.5e3,\n  \"f\": \"x,}\"\n}"
        );
        assert_eq!(json_pretty("not json <x>"), "not json &lt;x&gt;");
    }

    #[test]
    fn id_links() {
        assert_eq!(
            id_link("cus_NffrFeUfNV2Hib").unwrap(),
            "/objects/cus_NffrFeUfNV2Hib"
        );
        assert_eq!(
            id_link("evt_1NG8Du2eZvKYlo2CUI79vXWy").unwrap(),
            "/events/evt_1NG8Du2eZvKYlo2CUI79vXWy"
        );
        assert_eq!(
            id_link("cs_test_a1b2c3d4e5").unwrap(),
            "/objects/cs_test_a1b2c3d4e5"
        );
        for not in [
            "usd",
            "hello world",
            "req_12345678",
            "a_b",
            "cus_<script>xx",
            "Cus_12345678",
            "charge_automatically",
            "send_invoice",
        ] {
            assert_eq!(id_link(not), None, "{not}");
        }
    }

    #[test]
    fn chart_has_a_bar_per_hour_and_escaped_tooltips() {
        let bars: Vec<Bar> = (0..48)
            .map(|h| Bar {
                hour: 1_700_000_000 / 3600 * 3600 + h * 3600,
                counts: [h as u64, 1, 0, 0, 2, 0],
            })
            .collect();
        let svg = chart_svg(&bars);
        assert_eq!(svg.matches("<title>").count(), 48);
        assert!(svg.contains("class=\"o-applied\""));
        assert!(svg.contains("50 events, 47 applied, 1 tie resolved, 2 nothing to mirror"));
        assert!(!svg.contains("style="));
        // Four grid steps, each label exact: 51 events fit under 80 (0, 20, 40, 60, 80).
        assert_eq!(nice_ceiling(51), 80);
        assert_eq!(nice_ceiling(5), 8);
        assert_eq!(nice_ceiling(4), 4);
        assert_eq!(nice_ceiling(1), 4);
        assert_eq!(nice_ceiling(4001), 8000);
        let labels: Vec<&str> = svg
            .split("text-anchor=\"end\">")
            .skip(1)
            .map(|rest| &rest[..rest.find('<').unwrap()])
            .collect();
        assert_eq!(labels, ["0", "20", "40", "60", "80"]);
    }

    #[test]
    fn page_frame_escapes_the_title_and_carries_the_token() {
        let frame = Frame {
            csrf: "tok\"en",
            logged_in: true,
            active: "events",
        };
        let html = page(XSS, &frame, "<p>body</p>");
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("value=\"tok&quot;en\""));
        assert!(html.contains("<a href=\"/events\" class=\"on\">"));
        assert!(!html.contains("style="));
        let login = login_page("t", Some(XSS));
        assert!(login.contains("name=\"password\"") && login.contains("name=\"csrf_token\""));
        assert!(!login.contains("<script>alert"));
    }

    #[test]
    fn badges_and_explanations() {
        assert!(decision_badge(Some("<x>")).contains("&lt;x&gt;"));
        assert!(decision_badge(Some("tie_resolved:causal")).contains("o-tie"));
        assert!(decision_badge(None).contains("o-pending"));
        for d in Decision::ALL {
            assert_ne!(
                decision_explained(Some(d.as_str())),
                decision_explained(Some("made-up")),
                "{d:?} is explained"
            );
        }
    }
}
