//! Rule text → syntax tree.
//!
//! Traefik parses rules with Go's expression parser (through vulcand/predicate), so the
//! accepted language is a Go expression made of calls with string-literal arguments, `&&`,
//! `||`, `!` and parentheses. We parse the same language with a small hand-written lexer and
//! precedence-climbing parser, so that every error can point at a byte offset in the rule.

use super::RuleError;

/// A parsed rule before its matchers are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A matcher call: `Host(`a`)`.
    Call {
        /// The matcher name as written.
        name: String,
        /// String arguments, unquoted.
        args: Vec<String>,
        /// Byte offset of the name in the rule.
        pos: usize,
    },
    /// `a && b`
    And(Box<Expr>, Box<Expr>),
    /// `a || b`
    Or(Box<Expr>, Box<Expr>),
    /// `!a`
    Not(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Not,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("bare word `{s}`"),
            Tok::Str(_) => "string".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::And => "`&&`".into(),
            Tok::Or => "`||`".into(),
            Tok::Not => "`!`".into(),
            Tok::Eof => "end of rule".into(),
        }
    }
}

fn lex(rule: &str) -> Result<Vec<(Tok, usize)>, RuleError> {
    let b = rule.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => out.push((Tok::LParen, start)),
            b')' => out.push((Tok::RParen, start)),
            b',' => out.push((Tok::Comma, start)),
            b'!' => out.push((Tok::Not, start)),
            b'&' if b.get(i + 1) == Some(&b'&') => {
                out.push((Tok::And, start));
                i += 1;
            }
            b'|' if b.get(i + 1) == Some(&b'|') => {
                out.push((Tok::Or, start));
                i += 1;
            }
            b'`' => {
                let end = rule[i + 1..]
                    .find('`')
                    .ok_or_else(|| RuleError::at(start, "unterminated raw string (missing closing backtick)"))?;
                // Go drops carriage returns from raw strings.
                let s: String = rule[i + 1..i + 1 + end].chars().filter(|&c| c != '\r').collect();
                out.push((Tok::Str(s), start));
                i += end + 2;
                continue;
            }
            b'"' => {
                let (s, len) = unquote_go(&rule[i..]).map_err(|(off, msg)| RuleError::at(start + off, msg))?;
                out.push((Tok::Str(s), start));
                i += len;
                continue;
            }
            b'\'' => {
                return Err(RuleError::at(
                    start,
                    "single quotes are not allowed: quote arguments with backticks or double quotes",
                ));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                out.push((Tok::Ident(rule[i..j].to_string()), start));
                i = j;
                continue;
            }
            _ => {
                let ch = rule[i..].chars().next().unwrap_or('?');
                return Err(RuleError::at(start, format!("unexpected character `{ch}`")));
            }
        }
        i += 1;
    }
    out.push((Tok::Eof, rule.len()));
    Ok(out)
}

/// Decodes a Go interpreted string literal at the start of `s`. Returns the value and the
/// literal's length in bytes, or an error offset (relative to `s`) and message.
fn unquote_go(s: &str) -> Result<(String, usize), (usize, String)> {
    let mut out = String::new();
    let mut it = s.char_indices().skip(1).peekable();
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\n' => return Err((i, "newline in double-quoted string".into())),
            '\\' => {
                let (j, e) = it.next().ok_or((i, "unterminated escape".to_string()))?;
                let simple = match e {
                    'a' => Some('\x07'),
                    'b' => Some('\x08'),
                    'f' => Some('\x0c'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    'v' => Some('\x0b'),
                    '\\' => Some('\\'),
                    '"' => Some('"'),
                    _ => None,
                };
                if let Some(ch) = simple {
                    out.push(ch);
                    continue;
                }
                let (digits, radix) = match e {
                    'x' => (2, 16),
                    'u' => (4, 16),
                    'U' => (8, 16),
                    '0'..='7' => (2, 8),
                    _ => return Err((j, format!("unknown escape sequence `\\{e}`"))),
                };
                let mut v: u32 = if radix == 8 { e.to_digit(8).unwrap_or(0) } else { 0 };
                for _ in 0..digits {
                    let (k, d) = it.next().ok_or((j, "truncated escape sequence".to_string()))?;
                    let dv = d.to_digit(radix).ok_or((k, format!("invalid digit `{d}` in escape sequence")))?;
                    v = v * radix + dv;
                }
                let ch = char::from_u32(v).ok_or((j, "escape sequence is not a valid character".to_string()))?;
                out.push(ch);
            }
            c => out.push(c),
        }
    }
    Err((0, "unterminated double-quoted string".into()))
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.i].0
    }
    fn pos(&self) -> usize {
        self.toks[self.i].1
    }
    fn bump(&mut self) -> (Tok, usize) {
        let t = self.toks[self.i].clone();
        if self.i + 1 < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        let mut left = self.and()?;
        while *self.peek() == Tok::Or {
            self.bump();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        let mut left = self.unary()?;
        while *self.peek() == Tok::And {
            self.bump();
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        if *self.peek() == Tok::Not {
            self.bump();
            let inner = self.unary()?;
            // `!!x` is `x`.
            return Ok(match inner {
                Expr::Not(x) => *x,
                other => Expr::Not(Box::new(other)),
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, RuleError> {
        let (tok, pos) = self.bump();
        match tok {
            Tok::LParen => {
                let e = self.or()?;
                let (t, p) = self.bump();
                if t != Tok::RParen {
                    return Err(RuleError::at(p, format!("expected `)`, found {}", t.describe())));
                }
                Ok(e)
            }
            Tok::Ident(name) => {
                if *self.peek() != Tok::LParen {
                    return Err(RuleError::at(
                        pos,
                        format!("bare word `{name}`: a matcher must be called, e.g. `{name}(`value`)`"),
                    ));
                }
                self.bump();
                let mut args = Vec::new();
                loop {
                    let (t, p) = self.bump();
                    match t {
                        Tok::RParen => break,
                        Tok::Str(s) => {
                            args.push(s);
                            let (t2, p2) = self.bump();
                            match t2 {
                                Tok::Comma => {
                                    if *self.peek() == Tok::RParen {
                                        self.bump();
                                        break;
                                    }
                                }
                                Tok::RParen => break,
                                other => {
                                    return Err(RuleError::at(
                                        p2,
                                        format!(
                                            "expected `,` or `)` in arguments of {name}, found {}",
                                            other.describe()
                                        ),
                                    ));
                                }
                            }
                        }
                        other => {
                            return Err(RuleError::at(
                                p,
                                format!("arguments of {name} must be quoted strings, found {}", other.describe()),
                            ));
                        }
                    }
                }
                Ok(Expr::Call { name, args, pos })
            }
            other => Err(RuleError::at(pos, format!("expected a matcher, `!` or `(`, found {}", other.describe()))),
        }
    }
}

/// Parses a rule into its syntax tree.
pub fn parse(rule: &str) -> Result<Expr, RuleError> {
    if rule.trim().is_empty() {
        return Err(RuleError::at(0, "empty rule"));
    }
    let toks = lex(rule)?;
    let mut p = Parser { toks, i: 0 };
    let e = p.or()?;
    if *p.peek() != Tok::Eof {
        return Err(RuleError::at(p.pos(), format!("unexpected {} after a complete expression", p.peek().describe())));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[&str]) -> Expr {
        Expr::Call { name: name.into(), args: args.iter().map(|s| s.to_string()).collect(), pos: 0 }
    }

    fn strip_pos(e: Expr) -> Expr {
        match e {
            Expr::Call { name, args, .. } => Expr::Call { name, args, pos: 0 },
            Expr::And(a, b) => Expr::And(Box::new(strip_pos(*a)), Box::new(strip_pos(*b))),
            Expr::Or(a, b) => Expr::Or(Box::new(strip_pos(*a)), Box::new(strip_pos(*b))),
            Expr::Not(a) => Expr::Not(Box::new(strip_pos(*a))),
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let e = strip_pos(parse("A(`a`) || B(`b`) && C(`c`)").unwrap());
        assert_eq!(
            e,
            Expr::Or(
                Box::new(call("A", &["a"])),
                Box::new(Expr::And(Box::new(call("B", &["b"])), Box::new(call("C", &["c"]))))
            )
        );
    }

    #[test]
    fn double_negation_cancels() {
        assert_eq!(strip_pos(parse("!!A(`a`)").unwrap()), call("A", &["a"]));
        assert_eq!(strip_pos(parse("!(A(`a`))").unwrap()), Expr::Not(Box::new(call("A", &["a"]))));
    }

    #[test]
    fn double_quotes_interpret_go_escapes() {
        let e = strip_pos(parse(r#"A("a\"b\x41\u00e9\n")"#).unwrap());
        assert_eq!(e, call("A", &["a\"bAé\n"]));
        // Backticks are raw.
        assert_eq!(strip_pos(parse(r"A(`a\n`)").unwrap()), call("A", &["a\\n"]));
    }

    #[test]
    fn errors_point_at_the_offending_position() {
        let err = parse("Host(`a`) && foo").unwrap_err();
        assert_eq!(err.position, 13);
        assert!(err.message.contains("bare word"), "{err}");
        let err = parse("Host(`a`) Path(`/`)").unwrap_err();
        assert_eq!(err.position, 10);
        let err = parse("Host(`a`").unwrap_err();
        assert_eq!(err.position, 8);
        let err = parse("Host('a')").unwrap_err();
        assert_eq!(err.position, 5);
        assert!(parse("").is_err());
        assert!(parse("   ").is_err());
        assert!(parse("Host(a)").is_err());
        assert!(parse("Host(`a`) &&").is_err());
        assert!(parse("(Host(`a`)").is_err());
        assert!(parse("Host(`a`))").is_err());
        assert!(parse("Host(`a` `b`)").is_err());
        assert!(parse("Host(`a) && Path(`/`)").is_err());
    }

    #[test]
    fn trailing_comma_is_accepted_like_go() {
        assert_eq!(strip_pos(parse("A(`a`, `b`,)").unwrap()), call("A", &["a", "b"]));
    }
}
