//! The small expression language of a feed mapping's `expr`: text
//! derivations from a source row, nothing more.
//!
//! ```text
//! expr   := term ('||' term)*
//! term   := 'text' | column | "quoted column" | func '(' args ')'
//! func   := substr(expr, start[, length])   characters, start at 1
//!         | upper(expr) | lower(expr) | trim(expr)
//!         | concat(expr, ...)               NULL arguments are skipped
//! ```
//!
//! `a || b` is NULL when either side is NULL (as in SQL). A column is any
//! run of letters (Chinese included), digits and `_` not starting with a
//! digit, or any name in double quotes. Numbers, dates and other values are
//! used in their text form (`2024-06-01` for a date). The size of an
//! expression is bounded, and evaluating one cannot fail or loop.
//!
//! Example: the birth date of a resident ID number, `substr(身份证号, 7, 8)`,
//! with the field's `cast = { date = ["%Y%m%d"] }`.

use std::borrow::Cow;

use crate::datum::{Datum, Row};
use crate::types::SqlType;

/// Longest expression text, in bytes.
const MAX_LEN: usize = 1000;
/// Deepest nesting of function calls.
const MAX_DEPTH: usize = 16;

/// A parsed expression whose columns are resolved to source positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    node: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Literal(String),
    Column(usize),
    /// `a || b || ...`: NULL if any part is.
    Pipe(Vec<Node>),
    /// `concat(...)`: NULL parts skipped.
    Concat(Vec<Node>),
    Substr(Box<Node>, usize, Option<usize>),
    Upper(Box<Node>),
    Lower(Box<Node>),
    Trim(Box<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Text(String),
    Ident(String),
    Quoted(String),
    Int(i64),
    Pipe,
    Open,
    Close,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        match c {
            '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            '|' => {
                chars.next();
                match chars.next() {
                    Some((_, '|')) => out.push(Token::Pipe),
                    _ => return Err(format!("at {pos}: expected || (concatenation)")),
                }
            }
            '\'' | '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => {
                            // A doubled quote stands for itself.
                            if chars.peek().map(|(_, n)| *n) == Some(c) {
                                chars.next();
                                s.push(c);
                            } else {
                                break;
                            }
                        }
                        Some((_, ch)) => s.push(ch),
                        None => return Err(format!("at {pos}: unterminated quote")),
                    }
                }
                out.push(if c == '\'' {
                    Token::Text(s)
                } else {
                    Token::Quoted(s)
                });
            }
            c if c.is_ascii_digit() || c == '-' => {
                let mut s = String::new();
                s.push(c);
                chars.next();
                while let Some(&(_, d)) = chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    s.push(d);
                    chars.next();
                }
                let n = s
                    .parse()
                    .map_err(|_| format!("at {pos}: {s:?} is not an integer"))?;
                out.push(Token::Int(n));
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if !(d.is_alphanumeric() || d == '_') {
                        break;
                    }
                    s.push(d);
                    chars.next();
                }
                out.push(Token::Ident(s));
            }
            other => return Err(format!("at {pos}: unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser<'a, F> {
    tokens: Vec<Token>,
    pos: usize,
    resolve: &'a F,
}

impl<F> Parser<'_, F>
where
    F: Fn(&str) -> Result<usize, String>,
{
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, want: Token, what: &str) -> Result<(), String> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            _ => Err(format!("expected {what}")),
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} calls"));
        }
        let mut parts = vec![self.term(depth)?];
        while self.peek() == Some(&Token::Pipe) {
            self.next();
            parts.push(self.term(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Node::Pipe(parts)
        })
    }

    fn int(&mut self, what: &str) -> Result<i64, String> {
        match self.next() {
            Some(Token::Int(n)) => Ok(n),
            _ => Err(format!("substr: {what} must be an integer")),
        }
    }

    fn term(&mut self, depth: usize) -> Result<Node, String> {
        match self.next() {
            Some(Token::Text(s)) => Ok(Node::Literal(s)),
            Some(Token::Quoted(name)) => Ok(Node::Column((self.resolve)(&name)?)),
            Some(Token::Ident(name)) if self.peek() == Some(&Token::Open) => {
                self.next();
                let node = match name.to_ascii_lowercase().as_str() {
                    "substr" | "substring" => {
                        let inner = self.expr(depth + 1)?;
                        self.expect(Token::Comma, "substr(text, start[, length])")?;
                        let start = self.int("start")?;
                        if start < 1 {
                            return Err("substr: start counts from 1".to_owned());
                        }
                        let len = if self.peek() == Some(&Token::Comma) {
                            self.next();
                            let n = self.int("length")?;
                            if n < 0 {
                                return Err("substr: length is negative".to_owned());
                            }
                            Some(n as usize)
                        } else {
                            None
                        };
                        Node::Substr(Box::new(inner), start as usize, len)
                    }
                    "upper" => Node::Upper(Box::new(self.expr(depth + 1)?)),
                    "lower" => Node::Lower(Box::new(self.expr(depth + 1)?)),
                    "trim" => Node::Trim(Box::new(self.expr(depth + 1)?)),
                    "concat" => {
                        let mut args = vec![self.expr(depth + 1)?];
                        while self.peek() == Some(&Token::Comma) {
                            self.next();
                            args.push(self.expr(depth + 1)?);
                        }
                        Node::Concat(args)
                    }
                    _ => {
                        return Err(format!(
                            "unknown function {name} (known: substr, upper, lower, trim, concat)"
                        ))
                    }
                };
                self.expect(Token::Close, &format!("')' closing {name}("))?;
                Ok(node)
            }
            Some(Token::Ident(name)) => Ok(Node::Column((self.resolve)(&name)?)),
            Some(Token::Int(_)) => Err(
                "a number is only allowed as substr's start or length; quote text as 'text'"
                    .to_owned(),
            ),
            Some(other) => Err(format!("unexpected {other:?}")),
            None => Err("the expression ends too early".to_owned()),
        }
    }
}

/// Whether values of a SQL type have a text form an expression, a code
/// table or `cast = "text"` can use.
pub(crate) fn has_text_form(t: &SqlType) -> bool {
    !matches!(
        t,
        SqlType::Bytes
            | SqlType::Time
            | SqlType::Timestamp
            | SqlType::TimestampTz
            | SqlType::Array(_)
    )
}

/// The text form of a value (`None` for NULL and for kinds without one).
pub(crate) fn text_of(d: &Datum) -> Option<Cow<'_, str>> {
    Some(match d {
        Datum::Text(s) | Datum::Json(s) => Cow::Borrowed(s.as_str()),
        Datum::Int(v) => Cow::Owned(v.to_string()),
        Datum::Long(v) => Cow::Owned(v.to_string()),
        Datum::Decimal(v) => Cow::Owned(v.to_string()),
        Datum::Float(v) => Cow::Owned(v.to_string()),
        Datum::Double(v) => Cow::Owned(v.to_string()),
        Datum::Bool(v) => Cow::Borrowed(if *v { "true" } else { "false" }),
        Datum::Date(v) => Cow::Owned(super::date::format_iso_date(*v)),
        Datum::Uuid(v) => Cow::Owned(v.to_string()),
        Datum::Null
        | Datum::Bytes(_)
        | Datum::Time(_)
        | Datum::Timestamp(_)
        | Datum::TimestampTz(_)
        | Datum::Array(_) => return None,
    })
}

impl Expr {
    /// Parses `text`; `resolve` gives a column name's position in the
    /// source row, or why it cannot be used.
    pub fn parse(
        text: &str,
        resolve: &impl Fn(&str) -> Result<usize, String>,
    ) -> Result<Expr, String> {
        if text.len() > MAX_LEN {
            return Err(format!("longer than {MAX_LEN} bytes"));
        }
        let mut parser = Parser {
            tokens: tokenize(text)?,
            pos: 0,
            resolve,
        };
        let node = parser.expr(0)?;
        if let Some(extra) = parser.peek() {
            return Err(format!("unexpected {extra:?} after the expression"));
        }
        Ok(Expr { node })
    }

    /// The value for a source row: `None` for NULL.
    pub fn eval(&self, row: &Row) -> Option<String> {
        eval(&self.node, row)
    }
}

fn eval(node: &Node, row: &Row) -> Option<String> {
    match node {
        Node::Literal(s) => Some(s.clone()),
        Node::Column(i) => row.0.get(*i).and_then(text_of).map(Cow::into_owned),
        Node::Pipe(parts) => parts.iter().map(|p| eval(p, row)).collect(),
        Node::Concat(parts) => Some(parts.iter().filter_map(|p| eval(p, row)).collect()),
        Node::Substr(inner, start, len) => {
            let s = eval(inner, row)?;
            let chars = s.chars().skip(start - 1);
            Some(match len {
                Some(n) => chars.take(*n).collect(),
                None => chars.collect(),
            })
        }
        Node::Upper(inner) => eval(inner, row).map(|s| s.to_uppercase()),
        Node::Lower(inner) => eval(inner, row).map(|s| s.to_lowercase()),
        Node::Trim(inner) => eval(inner, row).map(|s| s.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [&str; 4] = ["身份证号", "省", "市", "house no"];

    fn resolve(name: &str) -> Result<usize, String> {
        COLUMNS
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no column {name}"))
    }

    fn row() -> Row {
        Row(vec![
            Datum::Text("330106199003071236".into()),
            Datum::Text(" 浙江省 ".into()),
            Datum::Null,
            Datum::Int(12),
        ])
    }

    fn eval_text(text: &str) -> Option<String> {
        Expr::parse(text, &resolve).unwrap().eval(&row())
    }

    #[test]
    fn expr_derives_text_from_columns_and_literals() {
        assert_eq!(
            eval_text("substr(身份证号, 7, 8)").as_deref(),
            Some("19900307")
        );
        assert_eq!(
            eval_text("SUBSTRING(身份证号, 15)").as_deref(),
            Some("1236")
        );
        assert_eq!(eval_text("substr(身份证号, 17, 10)").as_deref(), Some("36"));
        assert_eq!(
            eval_text("trim(省) || '杭州市'").as_deref(),
            Some("浙江省杭州市")
        );
        assert_eq!(
            eval_text("upper('abc') || lower('XY')").as_deref(),
            Some("ABCxy")
        );
        assert_eq!(
            eval_text("'No. ' || \"house no\"").as_deref(),
            Some("No. 12")
        );
        assert_eq!(eval_text("'it''s'").as_deref(), Some("it's"));
        // || propagates NULL, concat skips it.
        assert_eq!(eval_text("trim(省) || 市"), None);
        assert_eq!(
            eval_text("concat(trim(省), 市, '西湖区')").as_deref(),
            Some("浙江省西湖区")
        );
        assert_eq!(eval_text("substr(市, 1, 2)"), None);
    }

    #[test]
    fn expr_errors_say_what_is_wrong() {
        let cases = [
            ("substr(身份证号, 0, 8)", "counts from 1"),
            ("substr(身份证号, 1, -1)", "negative"),
            ("substr(身份证号)", "substr(text, start[, length])"),
            ("substr(身份证号, 'a')", "start must be an integer"),
            ("eval('rm')", "unknown function eval"),
            ("姓名", "no column 姓名"),
            ("upper(省", "')' closing upper("),
            ("省 | 市", "expected ||"),
            ("'open", "unterminated quote"),
            ("省 市", "after the expression"),
            ("7", "only allowed as substr"),
            ("", "ends too early"),
            ("省 + 市", "unexpected character '+'"),
        ];
        for (text, needle) in cases {
            let err = Expr::parse(text, &resolve).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let deep = format!("{}省{}", "upper(".repeat(20), ")".repeat(20));
        assert!(Expr::parse(&deep, &resolve)
            .unwrap_err()
            .contains("nested deeper"));
        let long = format!("'{}'", "a".repeat(1001));
        assert!(Expr::parse(&long, &resolve)
            .unwrap_err()
            .contains("longer than"));
    }
}
