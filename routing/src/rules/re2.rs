//! Go RE2 regexps on Rust's `regex` crate.
//!
//! Traefik compiles rule and middleware regexps with Go's `regexp` (RE2 syntax). Rust's
//! `regex` is close but differs in ways users would notice, so every user regexp goes
//! through [`translate`] before it is compiled:
//! - RE2 treats a `{` that does not start a valid repetition (`{n}`, `{n,}`, `{n,m}`) as a
//!   literal, so `/{path:(css|js)}` matches the text `/{path:css}`. Rust rejects such braces
//!   (and accepts `{,n}`, which RE2 reads literally), so we escape them.
//! - `\d`, `\w`, `\s` and `\b` are ASCII-only in RE2 and Unicode-aware in Rust.
//! - Inside a class, Rust gives `[`, `&&` and `~~` a meaning (nested classes and set
//!   operations); RE2 reads them literally.
//! - RE2's `\Q…\E` quoting does not exist in Rust.

use regex::Regex;

/// Compiles a Go RE2 pattern with Go's semantics.
pub fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&translate(pattern))
}

fn is_valid_repeat(chars: &[char], open: usize) -> Option<usize> {
    // `{` digits+ (`,` digits*)? `}` — returns the index of the closing brace.
    let mut i = open + 1;
    let start = i;
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    if i == start {
        return None;
    }
    if i < chars.len() && chars[i] == ',' {
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
    }
    (i < chars.len() && chars[i] == '}').then_some(i)
}

fn push_escaped(out: &mut String, c: char) {
    if c.is_ascii_punctuation() || c == ' ' {
        out.push('\\');
    }
    out.push(c);
}

/// Rewrites a Go RE2 pattern into an equivalent pattern for Rust's `regex` crate.
pub fn translate(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        i = if chars[i] == '\\' && i + 1 < chars.len() {
            translate_escape(&chars, i, in_class, &mut out)
        } else if in_class {
            translate_in_class(&chars, i, &mut in_class, &mut out)
        } else {
            translate_outside_class(&chars, i, &mut in_class, &mut out)
        };
    }
    out
}

/// Translates the escape `\` + `chars[i + 1]` at `i`; returns the index after it.
fn translate_escape(chars: &[char], i: usize, in_class: bool, out: &mut String) -> usize {
    let d = chars[i + 1];
    match d {
        'Q' => translate_quoted(chars, i, out),
        'd' | 'D' | 'w' | 'W' | 's' | 'S' => {
            push_perl_class(d, in_class, out);
            i + 2
        }
        'b' | 'B' if !in_class => {
            out.push_str(if d == 'b' { r"(?-u:\b)" } else { r"(?-u:\B)" });
            i + 2
        }
        'p' | 'P' | 'x' if chars.get(i + 2) == Some(&'{') => {
            // Copy `\p{Greek}` / `\x{10FFFF}` through unchanged.
            let mut j = i + 2;
            while j < chars.len() && chars[j] != '}' {
                j += 1;
            }
            out.extend(&chars[i..(j + 1).min(chars.len())]);
            j + 1
        }
        _ => {
            out.push('\\');
            out.push(d);
            i + 2
        }
    }
}

/// Translates the `\Q…\E` quote at `i` into escaped literals; returns the index after it.
fn translate_quoted(chars: &[char], i: usize, out: &mut String) -> usize {
    let rest: String = chars[i + 2..].iter().collect();
    let (lit, consumed) = match rest.find("\\E") {
        Some(end) => (&rest[..end], end + 2),
        None => (rest.as_str(), rest.len()),
    };
    for ch in lit.chars() {
        push_escaped(out, ch);
    }
    i + 2 + lit.chars().count() + (consumed - lit.len())
}

/// Pushes the ASCII-only form of the Perl class `\d`, `\w` or `\s` (negated when upper-case).
fn push_perl_class(d: char, in_class: bool, out: &mut String) {
    let set = match d.to_ascii_lowercase() {
        'd' => "0-9",
        'w' => "0-9A-Za-z_",
        _ => r"\t\n\x0C\r ",
    };
    let neg = d.is_ascii_uppercase();
    match (in_class, neg) {
        (true, false) => out.push_str(set),
        _ => {
            out.push('[');
            if neg {
                out.push('^');
            }
            out.push_str(set);
            out.push(']');
        }
    }
}

/// Translates `chars[i]` inside a class, where `[`, `&&` and `~~` are literals; returns the
/// index after what it consumed.
fn translate_in_class(chars: &[char], i: usize, in_class: &mut bool, out: &mut String) -> usize {
    let c = chars[i];
    match c {
        ']' => {
            *in_class = false;
            out.push(']');
        }
        '[' => {
            // POSIX classes such as `[:alpha:]` keep their meaning.
            if chars.get(i + 1) == Some(&':') {
                let rest: String = chars[i..].iter().collect();
                if let Some(end) = rest.find(":]") {
                    out.push_str(&rest[..end + 2]);
                    return i + rest[..end + 2].chars().count();
                }
            }
            out.push_str(r"\[");
        }
        '&' | '~' if chars.get(i + 1) == Some(&c) => {
            out.push('\\');
            out.push(c);
        }
        _ => out.push(c),
    }
    i + 1
}

/// Translates `chars[i]` outside a class, where braces that do not repeat are literals;
/// returns the index after what it consumed.
fn translate_outside_class(chars: &[char], i: usize, in_class: &mut bool, out: &mut String) -> usize {
    let c = chars[i];
    match c {
        '[' => {
            *in_class = true;
            return translate_class_start(chars, i, out);
        }
        '{' => match is_valid_repeat(chars, i) {
            Some(end) => {
                out.extend(&chars[i..=end]);
                return end + 1;
            }
            None => out.push_str(r"\{"),
        },
        '}' => out.push_str(r"\}"),
        _ => out.push(c),
    }
    i + 1
}

/// Translates the `[` (and `^`) opening a class at `i`; returns the index after it.
fn translate_class_start(chars: &[char], i: usize, out: &mut String) -> usize {
    out.push('[');
    let mut i = i + 1;
    if chars.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    // A `]` right after the opening bracket is a literal.
    if chars.get(i) == Some(&']') {
        out.push_str(r"\]");
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_repetition_braces_are_literals() {
        let re = compile("/{path:(css|js)}").unwrap();
        assert!(re.is_match("/{path:css}"));
        assert!(!re.is_match("/css"));
        // `{,3}` is literal in RE2.
        let re = compile("^a{,3}$").unwrap();
        assert!(re.is_match("a{,3}"));
        assert!(!re.is_match("aa"));
        // Valid repetitions still work.
        let re = compile("^a{2,3}$").unwrap();
        assert!(re.is_match("aaa"));
        assert!(!re.is_match("a"));
    }

    #[test]
    fn perl_classes_are_ascii_only() {
        let re = compile(r"^\d+$").unwrap();
        assert!(re.is_match("123"));
        assert!(!re.is_match("١٢٣"), "Arabic-Indic digits are not \\d in RE2");
        let re = compile(r"^[\w-]+$").unwrap();
        assert!(re.is_match("a_b-c"));
        assert!(!re.is_match("é"));
        let re = compile(r"^\D$").unwrap();
        assert!(re.is_match("x"));
    }

    #[test]
    fn class_operators_are_literal() {
        let re = compile("^[a&&b]+$").unwrap();
        assert!(re.is_match("a&b"));
        let re = compile("^[[:alpha:]]+$").unwrap();
        assert!(re.is_match("abc"));
        let re = compile("^[]a]+$").unwrap();
        assert!(re.is_match("]a"));
        let re = compile("^[a[]+$").unwrap();
        assert!(re.is_match("a["));
    }

    #[test]
    fn quoted_literal() {
        let re = compile(r"^\Qa.b*\E$").unwrap();
        assert!(re.is_match("a.b*"));
        assert!(!re.is_match("axb"));
    }

    #[test]
    fn invalid_patterns_still_fail() {
        assert!(compile("(").is_err());
        assert!(compile("[").is_err());
    }
}
