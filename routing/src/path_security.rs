//! Request path security, as Traefik v3.7 applies it before and after routing.
//!
//! Before routing, [`sanitize`] turns the path as sent into the one every lane routes on and
//! forwards:
//! 1. a `%` that does not start a two-digit escape, or a literal `#`, is a bad request;
//! 2. escapes are written upper case (`%2f` → `%2F`), and those of unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`) are decoded (RFC 3986 §2.3, §6.2.2.1), so `%2e%2e` is `..`;
//! 3. a literal `\` becomes `%5C`, as Go's escaped path writes it (some backends take it
//!    for a separator);
//! 4. `.` and `..` segments and repeated slashes go, as Go's `path.Join` does (a trailing
//!    slash stays). `..` never climbs above the root.
//!
//! So `/public/../admin` and `/public/%2e%2e/admin` both route, and reach the backend, as
//! `/admin`: a router for `/public` cannot be used to reach what `/admin` guards.
//!
//! After the middlewares, a path they rewrote must not have a `.` or `..` segment
//! ([`has_dot_segment`]); such a request is a bad request.
//!
//! After routing, [`EncodedCharacters::refused`] refuses (400) a path that still carries an
//! encoded `/ \ NUL ; % ? #` unless the router allows it (an `encodedCharacters`
//! middleware) or its entrypoint does (`http.encodedCharacters`). Nothing is allowed by
//! default: these are the escapes that let a router and a backend read one path two ways.
//!
//! Everything here is pure and allocation-free for a path that needs no change.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Which encoded characters a path may carry (Traefik's `encodedCharacters`, on an
/// entrypoint or as a middleware). Each one left `false` is refused with 400.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EncodedCharacters {
    /// `%2F`.
    #[serde(default)]
    pub allow_encoded_slash: bool,
    /// `%5C` (and a literal `\`).
    #[serde(default)]
    pub allow_encoded_back_slash: bool,
    /// `%00`.
    #[serde(default)]
    pub allow_encoded_null_character: bool,
    /// `%3B`.
    #[serde(default)]
    pub allow_encoded_semicolon: bool,
    /// `%25`.
    #[serde(default)]
    pub allow_encoded_percent: bool,
    /// `%3F`.
    #[serde(default)]
    pub allow_encoded_question_mark: bool,
    /// `%23`.
    #[serde(default)]
    pub allow_encoded_hash: bool,
}

/// The guarded characters: Traefik's flag name and the escape it allows, in the order of
/// their bits in [`EncodedCharacters::bits`].
const GUARDED: [(&str, &str); 7] = [
    ("allowEncodedSlash", "%2F"),
    ("allowEncodedBackSlash", "%5C"),
    ("allowEncodedNullCharacter", "%00"),
    ("allowEncodedSemicolon", "%3B"),
    ("allowEncodedPercent", "%25"),
    ("allowEncodedQuestionMark", "%3F"),
    ("allowEncodedHash", "%23"),
];

impl EncodedCharacters {
    /// Every one allowed.
    pub const ALL: EncodedCharacters = EncodedCharacters {
        allow_encoded_slash: true,
        allow_encoded_back_slash: true,
        allow_encoded_null_character: true,
        allow_encoded_semicolon: true,
        allow_encoded_percent: true,
        allow_encoded_question_mark: true,
        allow_encoded_hash: true,
    };

    /// The flags, in [`GUARDED`]'s order.
    fn flags(&mut self) -> [&mut bool; 7] {
        [
            &mut self.allow_encoded_slash,
            &mut self.allow_encoded_back_slash,
            &mut self.allow_encoded_null_character,
            &mut self.allow_encoded_semicolon,
            &mut self.allow_encoded_percent,
            &mut self.allow_encoded_question_mark,
            &mut self.allow_encoded_hash,
        ]
    }

    /// Sets the flag of Traefik's name `flag` (`allowEncodedSlash`, …); `false` for an
    /// unknown name.
    pub fn set(&mut self, flag: &str, value: bool) -> bool {
        let Some(i) = GUARDED.iter().position(|(name, _)| *name == flag) else { return false };
        *self.flags()[i] = value;
        true
    }

    /// The allowed characters as bits (bit `i` for [`GUARDED`]`[i]`): how a snapshot
    /// carries them.
    pub fn bits(mut self) -> u32 {
        self.flags().iter().enumerate().fold(0, |b, (i, f)| b | (u32::from(**f) << i))
    }

    /// The set [`EncodedCharacters::bits`] wrote.
    pub fn from_bits(bits: u32) -> EncodedCharacters {
        let mut e = EncodedCharacters::default();
        for (i, f) in e.flags().into_iter().enumerate() {
            *f = bits & (1 << i) != 0;
        }
        e
    }

    /// The first encoded character of a [`sanitize`]d path (escapes upper case) that is
    /// not allowed, as its escape (`"%2F"`).
    pub fn refused(&self, sanitized: &str) -> Option<&'static str> {
        if *self == Self::ALL || !sanitized.contains('%') {
            return None;
        }
        let bits = self.bits();
        let b = sanitized.as_bytes();
        b.iter().enumerate().filter(|&(_, &c)| c == b'%').find_map(|(i, _)| {
            let escape = b.get(i..i + 3)?;
            let k = GUARDED.iter().position(|(_, e)| e.as_bytes() == escape)?;
            (bits & (1 << k) == 0).then_some(GUARDED[k].1)
        })
    }
}

/// Why a path cannot be routed (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` that does not start a two-digit escape.
    #[error("invalid percent-encoding in the request path")]
    BadEscape,
    /// A literal `#` (a fragment has no place in a request).
    #[error("fragment in the request path")]
    Fragment,
    /// A `.` or `..` segment with parameters (`/..;/admin`): Java servers (Tomcat, Jetty)
    /// drop the parameters and climb, after the router matched the path as it was.
    #[error("dot segment with parameters in the request path")]
    DotSegmentParameters,
}

/// Whether a segment is `.` or `..` followed by `;` parameters.
fn dot_with_parameters(seg: &[u8]) -> bool {
    seg.starts_with(b".;") || seg.starts_with(b"..;")
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether the path needs more than a look: escapes, backslashes, fragments, dot segments
/// or repeated slashes. Most paths need none of it.
fn needs_work(p: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &c) in p.iter().enumerate() {
        match c {
            b'%' | b'\\' | b'#' => return true,
            b'/' if prev == b'/' => return true,
            // A segment that starts with a dot may be `.` or `..`.
            b'.' if prev == b'/' => {
                let rest = &p[i..];
                let seg = rest.split(|&c| c == b'/').next().unwrap_or(rest);
                if seg == b"." || seg == b".." || dot_with_parameters(seg) {
                    return true;
                }
            }
            _ => {}
        }
        prev = c;
    }
    false
}

/// The path every lane routes on and forwards (see the module documentation). A path that
/// does not start with `/` (`*`, or an empty one) is only checked for bad escapes.
pub fn sanitize(escaped: &str) -> Result<Cow<'_, str>, PathError> {
    let b = escaped.as_bytes();
    if !needs_work(b) {
        return Ok(Cow::Borrowed(escaped));
    }
    // Steps 1-3: escapes normalised, backslashes escaped.
    let mut norm = String::with_capacity(b.len() + 2);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => return Err(PathError::Fragment),
            b'%' => {
                let (Some(h), Some(l)) =
                    (b.get(i + 1).and_then(|&c| hex_value(c)), b.get(i + 2).and_then(|&c| hex_value(c)))
                else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                if is_unreserved(v) {
                    norm.push(v as char);
                } else {
                    norm.push('%');
                    norm.push(b[i + 1].to_ascii_uppercase() as char);
                    norm.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
            b'\\' => norm.push_str("%5C"),
            _ => {
                // Copy the run up to the next byte of interest (keeps UTF-8 intact).
                let end = b[i..].iter().position(|&c| matches!(c, b'#' | b'%' | b'\\')).map_or(b.len(), |n| i + n);
                norm.push_str(&escaped[i..end]);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    if !norm.starts_with('/') {
        return Ok(Cow::Owned(norm));
    }
    // Step 4: Go's `path.Join` on the escaped path, keeping a trailing slash.
    let trailing = norm.ends_with('/');
    let mut segs: Vec<&str> = Vec::new();
    for seg in norm.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s if dot_with_parameters(s.as_bytes()) => return Err(PathError::DotSegmentParameters),
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(norm.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing && !out.ends_with('/') {
        out.push('/');
    }
    Ok(if out == escaped { Cow::Borrowed(escaped) } else { Cow::Owned(out) })
}

/// Whether `path` has a `.` or `..` segment, written plainly or escaped (`%2e`). A path a
/// middleware rewrote (stripPrefix, replacePathRegex, …) from what the client sent must
/// not carry one: the backend would resolve it outside the path the router matched
/// (`stripPrefix: /api` turns `/api..` into `/..`).
pub fn has_dot_segment(path: &str) -> bool {
    // Segments as any backend may cut them: at `/`, at a backslash (escaped or not), and
    // without their `;` parameters (`..;` is `..` to Java servers).
    let separators = |b: &[u8], i: usize| match b[i] {
        b'/' | b'\\' => Some(1),
        b'%' if b.get(i + 1) == Some(&b'5') && matches!(b.get(i + 2), Some(b'c' | b'C')) => Some(3),
        _ => None,
    };
    let b = path.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i <= b.len() {
        let cut = if i == b.len() { Some(1) } else { separators(b, i) };
        match cut {
            Some(n) => {
                let seg = &b[start..i];
                let seg = seg.iter().position(|&c| c == b';').map_or(seg, |p| &seg[..p]);
                if is_dot_segment(seg) {
                    return true;
                }
                i += n;
                start = i;
            }
            None => i += 1,
        }
    }
    false
}

/// Whether a segment is `.` or `..`, written plainly or escaped.
fn is_dot_segment(b: &[u8]) -> bool {
    if b.len() > 6 || b.is_empty() {
        return false;
    }
    let mut dots = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%' && b.get(i + 1) == Some(&b'2') && matches!(b.get(i + 2), Some(b'e' | b'E')) {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots <= 2
}

#[cfg(test)]
mod tests;
