//! The small expression language of `[[rules]]`: `filter`, `when` and `clear`.
//!
//! ```text
//! expr       := or
//! or         := and ("OR" and)*
//! and        := unary ("AND" unary)*
//! unary      := "NOT" unary | "(" expr ")" | comparison
//! comparison := aggregate op arith | number op aggregate
//!             | key ("=" | "!=") 'text' | key ["NOT"] "IN" ('text', …)
//! arith      := term (("+" | "-") term)*
//! term       := factor (("*" | "/") factor)*
//! factor     := number | reference "." column | "(" arith ")"
//! aggregate  := count | sum | avg | min | max
//! key        := type | deviceId | window
//! op         := < | <= | > | >= | = | != | <>
//! ```
//! Keywords are case-insensitive. Parsing happens once, at start-up; evaluation
//! allocates nothing. `reference.column` reads the device's row of a `[[reference]]`
//! table: where the device has none (or the column is empty), the rule does not
//! apply to it (see [`Expr::references_present`]).

use std::fmt;

/// A window aggregate a condition can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// A key field a filter can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Type,
    DeviceId,
    Window,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn flip(self) -> Op {
        match self {
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            other => other,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num {
        agg: Agg,
        op: Op,
        value: f64,
    },
    Text {
        key: Key,
        negate: bool,
        values: Vec<String>,
    },
    /// An aggregate compared with arithmetic over reference columns.
    Cmp {
        agg: Agg,
        op: Op,
        rhs: Arith,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

/// Arithmetic on numbers and reference columns.
#[derive(Debug, Clone, PartialEq)]
pub enum Arith {
    Num(f64),
    /// `reference.column`.
    Ref(String, String),
    Bin(Box<Arith>, ArithOp, Box<Arith>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl Arith {
    /// Its value for `row`; `None` if a reference column has no value for it.
    pub fn eval(&self, row: &impl Row) -> Option<f64> {
        Some(match self {
            Arith::Num(v) => *v,
            Arith::Ref(table, column) => row.reference(table, column)?,
            Arith::Bin(a, op, b) => {
                let (a, b) = (a.eval(row)?, b.eval(row)?);
                match op {
                    ArithOp::Add => a + b,
                    ArithOp::Sub => a - b,
                    ArithOp::Mul => a * b,
                    ArithOp::Div => a / b,
                }
            }
        })
    }

    fn references<'a>(&'a self, out: &mut Vec<(&'a str, &'a str)>) {
        match self {
            Arith::Num(_) => {}
            Arith::Ref(t, c) => out.push((t, c)),
            Arith::Bin(a, _, b) => {
                a.references(out);
                b.references(out);
            }
        }
    }
}

/// What an expression is evaluated against: one closed window.
pub trait Row {
    fn agg(&self, agg: Agg) -> f64;
    fn key(&self, key: Key) -> &str;
    /// Column `column` of the row's device (and type) in reference table `table`.
    fn reference(&self, _table: &str, _column: &str) -> Option<f64> {
        None
    }
}

impl Expr {
    pub fn eval(&self, row: &impl Row) -> bool {
        match self {
            Expr::Num { agg, op, value } => {
                let v = row.agg(*agg);
                match op {
                    Op::Lt => v < *value,
                    Op::Le => v <= *value,
                    Op::Gt => v > *value,
                    Op::Ge => v >= *value,
                    Op::Eq => v == *value,
                    Op::Ne => v != *value,
                }
            }
            Expr::Text {
                key,
                negate,
                values,
            } => {
                let v = row.key(*key);
                values.iter().any(|x| x == v) != *negate
            }
            Expr::Cmp { agg, op, rhs } => {
                let (v, Some(value)) = (row.agg(*agg), rhs.eval(row)) else {
                    return false;
                };
                match op {
                    Op::Lt => v < value,
                    Op::Le => v <= value,
                    Op::Gt => v > value,
                    Op::Ge => v >= value,
                    Op::Eq => v == value,
                    Op::Ne => v != value,
                }
            }
            Expr::And(a, b) => a.eval(row) && b.eval(row),
            Expr::Or(a, b) => a.eval(row) || b.eval(row),
            Expr::Not(a) => !a.eval(row),
        }
    }

    /// Every `reference.column` the expression reads.
    pub fn references(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        self.collect_references(&mut out);
        out
    }

    fn collect_references<'a>(&'a self, out: &mut Vec<(&'a str, &'a str)>) {
        match self {
            Expr::Cmp { rhs, .. } => rhs.references(out),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.collect_references(out);
                b.collect_references(out);
            }
            Expr::Not(a) => a.collect_references(out),
            Expr::Num { .. } | Expr::Text { .. } => {}
        }
    }

    /// Whether every reference column it reads has a value for `row` (a rule does
    /// not apply to a device its reference tables do not list).
    pub fn references_present(&self, row: &impl Row) -> bool {
        match self {
            Expr::Cmp { rhs, .. } => rhs.eval(row).is_some(),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.references_present(row) && b.references_present(row)
            }
            Expr::Not(a) => a.references_present(row),
            Expr::Num { .. } | Expr::Text { .. } => true,
        }
    }

    /// The first aggregate the expression tests: the alert's `value`.
    pub fn first_aggregate(&self) -> Option<Agg> {
        match self {
            Expr::Num { agg, .. } | Expr::Cmp { agg, .. } => Some(*agg),
            Expr::Text { .. } => None,
            Expr::And(a, b) | Expr::Or(a, b) => a.first_aggregate().or_else(|| b.first_aggregate()),
            Expr::Not(a) => a.first_aggregate(),
        }
    }
}

/// Why an expression did not parse.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.at + 1)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `reference.column`.
    Ref(String, String),
    Num(f64),
    Str(String),
    Op(Op),
    Arith(ArithOp),
    LParen,
    RParen,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at, m: &str| {
        Err(ParseError {
            at,
            message: m.to_owned(),
        })
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => (out.push((i, Tok::LParen)), i += 1).1,
            b')' => (out.push((i, Tok::RParen)), i += 1).1,
            b',' => (out.push((i, Tok::Comma)), i += 1).1,
            b'<' | b'>' | b'=' | b'!' => {
                let two = b.get(i + 1).copied();
                let (op, len) = match (c, two) {
                    (b'<', Some(b'=')) => (Op::Le, 2),
                    (b'<', Some(b'>')) => (Op::Ne, 2),
                    (b'<', _) => (Op::Lt, 1),
                    (b'>', Some(b'=')) => (Op::Ge, 2),
                    (b'>', _) => (Op::Gt, 1),
                    (b'=', Some(b'=')) => (Op::Eq, 2),
                    (b'=', _) => (Op::Eq, 1),
                    (b'!', Some(b'=')) => (Op::Ne, 2),
                    _ => return err(i, "unexpected '!'"),
                };
                i += len;
                if matches!(b.get(i), Some(b'<' | b'>' | b'=' | b'!')) {
                    return err(i, "unexpected operator character");
                }
                out.push((start, Tok::Op(op)));
            }
            b'\'' | b'"' => {
                let quote = c;
                i += 1;
                let mut text = String::new();
                loop {
                    match b.get(i) {
                        None => return err(start, "unterminated string"),
                        Some(&q) if q == quote => {
                            if b.get(i + 1) == Some(&quote) {
                                text.push(quote as char);
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(_) => {
                            let ch = s[i..].chars().next().expect("in bounds");
                            text.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push((start, Tok::Str(text)));
            }
            b'*' => (out.push((i, Tok::Arith(ArithOp::Mul))), i += 1).1,
            b'/' => (out.push((i, Tok::Arith(ArithOp::Div))), i += 1).1,
            // After a value, + and - are operators; elsewhere they sign a number.
            b'+' | b'-'
                if matches!(
                    out.last(),
                    Some((_, Tok::Num(_) | Tok::Ident(_) | Tok::Ref(..) | Tok::RParen))
                ) =>
            {
                let op = if c == b'+' {
                    ArithOp::Add
                } else {
                    ArithOp::Sub
                };
                out.push((i, Tok::Arith(op)));
                i += 1;
            }
            b'0'..=b'9' | b'-' | b'+' | b'.' => {
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_digit()
                        || matches!(b[i], b'.' | b'e' | b'E')
                        || (matches!(b[i], b'-' | b'+') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                match s[start..i].parse::<f64>() {
                    Ok(v) if v.is_finite() => out.push((start, Tok::Num(v))),
                    _ => return err(start, &format!("not a number: {}", &s[start..i])),
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if b.get(i) == Some(&b'.')
                    && b.get(i + 1)
                        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                {
                    let dot = i;
                    i += 1;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    out.push((
                        start,
                        Tok::Ref(s[start..dot].to_owned(), s[dot + 1..i].to_owned()),
                    ));
                } else {
                    out.push((start, Tok::Ident(s[start..i].to_owned())));
                }
            }
            _ => {
                return err(
                    i,
                    &format!(
                        "unexpected character {:?}",
                        s[i..].chars().next().unwrap_or('?')
                    ),
                );
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

/// Parses an expression. See the module docs for the grammar.
pub fn parse(s: &str) -> Result<Expr, ParseError> {
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err(ParseError {
            at: 0,
            message: "empty expression".into(),
        });
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end: s.len(),
    };
    let e = p.or()?;
    if let Some((at, t)) = p.toks.get(p.pos) {
        return Err(ParseError {
            at: *at,
            message: format!("unexpected {t:?} after a complete expression"),
        });
    }
    Ok(e)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }
    fn at(&self) -> usize {
        self.toks.get(self.pos).map(|(a, _)| *a).unwrap_or(self.end)
    }
    fn err<T>(&self, m: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            at: self.at(),
            message: m.into(),
        })
    }
    fn keyword(&mut self, kw: &str) -> bool {
        if let Some(Tok::Ident(id)) = self.peek()
            && id.eq_ignore_ascii_case(kw)
        {
            self.pos += 1;
            return true;
        }
        false
    }
    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.and()?;
        while self.keyword("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.unary()?;
        while self.keyword("and") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            if self.peek() != Some(&Tok::RParen) {
                return self.err("expected ')'");
            }
            self.pos += 1;
            return Ok(e);
        }
        self.comparison()
    }
    fn comparison(&mut self) -> Result<Expr, ParseError> {
        let Some(first) = self.peek().cloned() else {
            return self.err("expected a comparison such as avg > 1000");
        };
        self.pos += 1;
        match first {
            Tok::Num(value) => {
                let op = self.op()?;
                let agg = self.aggregate()?;
                Ok(Expr::Num {
                    agg,
                    op: op.flip(),
                    value,
                })
            }
            Tok::Ident(name) => {
                if let Some(agg) = aggregate(&name) {
                    let op = self.op()?;
                    match self.arith()? {
                        Arith::Num(value) => Ok(Expr::Num { agg, op, value }),
                        rhs => Ok(Expr::Cmp { agg, op, rhs }),
                    }
                } else if let Some(key) = key(&name) {
                    let negate = self.keyword("not");
                    if self.keyword("in") {
                        return Ok(Expr::Text {
                            key,
                            negate,
                            values: self.list()?,
                        });
                    }
                    if negate {
                        return self.err("expected IN after NOT");
                    }
                    let negate = match self.op()? {
                        Op::Eq => false,
                        Op::Ne => true,
                        _ => return self.err(format!("{name} compares only with = or !=")),
                    };
                    match self.peek().cloned() {
                        Some(Tok::Str(v)) => {
                            self.pos += 1;
                            Ok(Expr::Text {
                                key,
                                negate,
                                values: vec![v],
                            })
                        }
                        _ => self.err(format!("expected a quoted string after {name}")),
                    }
                } else {
                    self.pos -= 1;
                    self.err(format!(
                        "unknown field {name:?}: expected count, sum, avg, min, max, type, deviceId or window"
                    ))
                }
            }
            other => {
                self.pos -= 1;
                self.err(format!(
                    "unexpected {other:?}: expected a comparison such as avg > 1000"
                ))
            }
        }
    }
    fn arith(&mut self) -> Result<Arith, ParseError> {
        self.left_assoc([ArithOp::Add, ArithOp::Sub], Self::term)
    }
    fn term(&mut self) -> Result<Arith, ParseError> {
        self.left_assoc([ArithOp::Mul, ArithOp::Div], Self::factor)
    }
    /// `operand (op operand)*` for the operators `ops`, left to right.
    fn left_assoc(
        &mut self,
        ops: [ArithOp; 2],
        operand: fn(&mut Self) -> Result<Arith, ParseError>,
    ) -> Result<Arith, ParseError> {
        let mut a = operand(self)?;
        while let Some(&Tok::Arith(op)) = self.peek()
            && ops.contains(&op)
        {
            self.pos += 1;
            a = Arith::Bin(Box::new(a), op, Box::new(operand(self)?));
        }
        Ok(a)
    }
    fn factor(&mut self) -> Result<Arith, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Num(v)) => {
                self.pos += 1;
                Ok(Arith::Num(v))
            }
            Some(Tok::Ref(t, c)) => {
                self.pos += 1;
                Ok(Arith::Ref(t, c))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let a = self.arith()?;
                if self.peek() != Some(&Tok::RParen) {
                    return self.err("expected ')'");
                }
                self.pos += 1;
                Ok(a)
            }
            _ => self.err("expected a number or a reference column (e.g. limits.co2_max)"),
        }
    }
    fn op(&mut self) -> Result<Op, ParseError> {
        match self.peek() {
            Some(Tok::Op(op)) => {
                let op = *op;
                self.pos += 1;
                Ok(op)
            }
            _ => self.err("expected a comparison operator (< <= > >= = !=)"),
        }
    }
    fn aggregate(&mut self) -> Result<Agg, ParseError> {
        match self.peek() {
            Some(Tok::Ident(n)) if aggregate(n).is_some() => {
                let a = aggregate(n).expect("checked");
                self.pos += 1;
                Ok(a)
            }
            _ => self.err("expected an aggregate (count, sum, avg, min, max)"),
        }
    }
    fn list(&mut self) -> Result<Vec<String>, ParseError> {
        if self.peek() != Some(&Tok::LParen) {
            return self.err("expected '(' after IN");
        }
        self.pos += 1;
        let mut values = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Tok::Str(v)) => {
                    self.pos += 1;
                    values.push(v);
                }
                _ => return self.err("expected a quoted string in the IN list"),
            }
            match self.peek() {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::RParen) => {
                    self.pos += 1;
                    return Ok(values);
                }
                _ => return self.err("expected ',' or ')' in the IN list"),
            }
        }
    }
}

fn aggregate(name: &str) -> Option<Agg> {
    Some(match name.to_ascii_lowercase().as_str() {
        "count" => Agg::Count,
        "sum" => Agg::Sum,
        "avg" => Agg::Avg,
        "min" => Agg::Min,
        "max" => Agg::Max,
        _ => return None,
    })
}

fn key(name: &str) -> Option<Key> {
    match name {
        "type" => Some(Key::Type),
        "deviceId" | "device_id" => Some(Key::DeviceId),
        "window" => Some(Key::Window),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(f64, &'static str, &'static str);
    impl Row for R {
        fn agg(&self, a: Agg) -> f64 {
            match a {
                Agg::Count => 10.0,
                Agg::Avg => self.0,
                Agg::Min => self.0 - 5.0,
                Agg::Max => self.0 + 5.0,
                Agg::Sum => self.0 * 10.0,
            }
        }
        fn key(&self, k: Key) -> &str {
            match k {
                Key::Type => self.1,
                Key::DeviceId => self.2,
                Key::Window => "w",
            }
        }
    }

    fn eval(s: &str, r: R) -> bool {
        parse(s).unwrap().eval(&r)
    }

    #[test]
    fn reference_columns_and_arithmetic_parse_and_evaluate() {
        struct R;
        impl Row for R {
            fn agg(&self, _: Agg) -> f64 {
                1000.0
            }
            fn key(&self, _: Key) -> &str {
                "CO2"
            }
            fn reference(&self, table: &str, column: &str) -> Option<f64> {
                match (table, column) {
                    ("limits", "co2_max") => Some(950.0),
                    ("limits", "step") => Some(10.0),
                    _ => None,
                }
            }
        }
        let yes = |e: &str| parse(e).unwrap().eval(&R);
        assert!(yes("avg > limits.co2_max"));
        assert!(!yes("avg < limits.co2_max * 0.95"));
        assert!(yes("avg >= limits.co2_max + 5 * limits.step"));
        assert!(!yes("avg > limits.co2_max + 5 * (limits.step + 1)"));
        assert!(yes("avg > limits.co2_max - -10"));
        assert!(yes("avg = 2000 / 2"));
        assert!(!yes("avg > limits.missing"), "a missing column tests false");
        let e = parse("avg > limits.co2_max AND NOT avg > other.x").unwrap();
        assert_eq!(e.references(), vec![("limits", "co2_max"), ("other", "x")]);
        assert!(!e.references_present(&R));
        assert!(parse("avg > limits.co2_max *").is_err());
        assert!(parse("avg > (limits.co2_max").is_err());
        assert!(parse("avg > limits.").is_err());
    }

    #[test]
    fn comparisons_and_logic_evaluate() {
        assert!(eval("avg > 1000", R(1001.0, "CO2", "d")));
        assert!(!eval("avg > 1000", R(1000.0, "CO2", "d")));
        assert!(eval("1000 < avg", R(1001.0, "CO2", "d")));
        assert!(eval("avg >= 1000 AND count >= 10", R(1000.0, "CO2", "d")));
        assert!(eval("avg > 2000 or max > 1000", R(999.0, "CO2", "d")));
        assert!(eval(
            "not (avg > 2000) and min <= 995",
            R(1000.0, "CO2", "d")
        ));
        assert!(eval("type = 'CO2'", R(0.0, "CO2", "d")));
        assert!(!eval("type != 'CO2'", R(0.0, "CO2", "d")));
        assert!(eval(
            "type IN ('TEMP', 'CO2') AND deviceId NOT IN ('x')",
            R(0.0, "CO2", "d")
        ));
        assert!(eval("sum = 100", R(10.0, "CO2", "d")));
    }

    #[test]
    fn the_first_aggregate_is_the_alert_value() {
        assert_eq!(
            parse("type = 'CO2' and max > 3 or avg < 1")
                .unwrap()
                .first_aggregate(),
            Some(Agg::Max)
        );
        assert_eq!(parse("type = 'CO2'").unwrap().first_aggregate(), None);
    }

    #[test]
    fn bad_expressions_are_errors() {
        for s in [
            "",
            "avg >",
            "avg >> 3",
            "colour < 3",
            "avg > 'x'",
            "type > 'a'",
            "(avg > 1",
            "avg > 1 avg",
            "type in 'a'",
            "avg > 1e999",
        ] {
            assert!(parse(s).is_err(), "{s:?} parsed");
        }
    }
}
