//! Just enough of a JSON scanner to find the exact text of `data.object` inside a stored event
//! body that serde_json already accepted, so the mirror can store it without re-encoding it, and
//! [`BodySpan`], where such a text lies in a stored body (what `object_rows` refers to).

/// The exact text of `data.object` inside a raw event body, without re-serialising it.
///
/// Returns `None` when the body has no top-level `data.object` or is not well-formed JSON there.
pub fn data_object_raw(body: &str) -> Option<&str> {
    let b = body.as_bytes();
    let (ds, _) = member_span(b, 0, b"data")?;
    let (os, oe) = member_span(b, ds, b"object")?;
    body.get(os..oe)
}

/// The span of the value of `key` in the object starting at `start` (after whitespace).
pub(super) fn member_span(b: &[u8], start: usize, key: &[u8]) -> Option<(usize, usize)> {
    let mut i = skip_ws(b, start);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let name = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(b, i + 1);
        let value_end = skip_value(b, value_start)?;
        if name == key {
            return Some((value_start, value_end));
        }
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

pub(super) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `i` is at an opening quote; returns the index after the closing one.
pub(super) fn skip_string(b: &[u8], start: usize) -> Option<usize> {
    // Plain indexing in one loop: this scans whole objects and must stay fast in debug builds.
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// `i` is at the first byte of a value; returns the index after it.
pub(super) fn skip_value(b: &[u8], start: usize) -> Option<usize> {
    match *b.get(start)? {
        b'"' => skip_string(b, start),
        b'{' | b'[' => {
            let (mut depth, mut in_string, mut i) = (0usize, false, start);
            while i < b.len() {
                match (in_string, b[i]) {
                    (true, b'\\') => i += 1,
                    (true, b'"') => in_string = false,
                    (true, _) => {}
                    (false, b'"') => in_string = true,
                    (false, b'{' | b'[') => depth += 1,
                    (false, b'}' | b']') => {
                        // `start` opened a container, so depth is at least 1 here.
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    (false, _) => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = start;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// Where a state's exact JSON text lies: bytes `start..start + len` of the body of event `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BodySpan {
    pub(super) seq: i64,
    pub(super) start: usize,
    pub(super) len: usize,
}

impl BodySpan {
    /// The span of `text` within `body`, when `text` is a slice of it.
    pub(super) fn of_slice(seq: i64, body: &[u8], text: &str) -> Option<BodySpan> {
        let start = (text.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
        (start + text.len() <= body.len()).then_some(BodySpan {
            seq,
            start,
            len: text.len(),
        })
    }
}
