//! Query strings and form bodies: URL decoding, and the small part of OData the API routes accept
//! (`$filter` with `eq`/`ge`/`gt`/`le`/`lt` clauses joined by `and` and `or`, `and` binding tighter, grouped
//! with parentheses; `$top`, `$skip`).

use std::time::SystemTime;

use super::clock::parse_rfc3339;
use super::config::Faults;

/// The most `$top` the API allows (Microsoft's documentation).
pub(crate) const MAX_TOP: usize = 10_000;

/// Decodes `a=1&b=x%20y` (also `+` for space) into pairs, in order.
pub(crate) fn decode_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ge,
    Gt,
    Le,
    Lt,
}

/// One `field op value` clause.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Clause {
    pub(crate) field: Field,
    pub(crate) op: Op,
    pub(crate) value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Text(String),
    Time(SystemTime),
}

/// A field a `$filter` may name, with the comparisons it allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    // Machines.
    Id,
    ComputerDnsName,
    HealthStatus,
    OsPlatform,
    OnboardingStatus,
    RbacGroupName,
    AadDeviceId,
    LastSeen,
    // Machine actions.
    MachineId,
    Type,
    Status,
    Requestor,
    CreationDateTimeUtc,
}

impl Field {
    fn is_time(self) -> bool {
        matches!(self, Field::LastSeen | Field::CreationDateTimeUtc)
    }
}

pub(crate) const MACHINE_FIELDS: &[(&str, Field)] = &[
    ("id", Field::Id),
    ("computerDnsName", Field::ComputerDnsName),
    ("healthStatus", Field::HealthStatus),
    ("osPlatform", Field::OsPlatform),
    ("onboardingStatus", Field::OnboardingStatus),
    ("rbacGroupName", Field::RbacGroupName),
    ("aadDeviceId", Field::AadDeviceId),
    ("lastSeen", Field::LastSeen),
];

pub(crate) const ACTION_FIELDS: &[(&str, Field)] = &[
    ("id", Field::Id),
    ("machineId", Field::MachineId),
    ("type", Field::Type),
    ("status", Field::Status),
    ("requestor", Field::Requestor),
    ("creationDateTimeUtc", Field::CreationDateTimeUtc),
];

/// A parsed `$filter`: clauses joined by `and` and `or`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Filter {
    Clause(Clause),
    /// Every part holds (no part: everything matches).
    And(Vec<Filter>),
    /// Some part holds.
    Or(Vec<Filter>),
}

impl Default for Filter {
    /// No filter: everything matches.
    fn default() -> Self {
        Filter::And(Vec::new())
    }
}

impl Filter {
    /// Whether an entity matches, `test` saying whether it satisfies one clause.
    pub(crate) fn matches(&self, test: &impl Fn(&Clause) -> bool) -> bool {
        match self {
            Filter::Clause(c) => test(c),
            Filter::And(parts) => parts.iter().all(|p| p.matches(test)),
            Filter::Or(parts) => parts.iter().any(|p| p.matches(test)),
        }
    }

    /// The clauses every match must satisfy (those joined to the whole by `and` alone): what an index may
    /// narrow the search by.
    pub(crate) fn required(&self) -> Vec<&Clause> {
        match self {
            Filter::Clause(c) => vec![c],
            Filter::And(parts) => parts.iter().flat_map(Filter::required).collect(),
            Filter::Or(_) => Vec::new(),
        }
    }
}

/// Parses a `$filter` against the fields an entity allows. Text fields take `eq` and a quoted literal; time
/// fields take any comparison and an RFC 3339 literal, quoted or not. Clauses join with `and` and `or`
/// (`and` binds tighter) and group with parentheses. The error says what is wrong.
pub(crate) fn parse_filter(s: &str, fields: &[(&str, Field)]) -> Result<Filter, String> {
    let tokens = tokenize(s)?;
    let mut parser = Parser { tokens: &tokens, at: 0, text: s, fields, depth: 0 };
    let filter = parser.or()?;
    match parser.tokens.get(parser.at) {
        None => Ok(filter),
        Some(Token::Close) => Err(format!("unbalanced `)` in $filter `{s}`")),
        Some(_) => Err(format!("expected `and` or `or` between clauses in $filter `{s}`")),
    }
}

/// How deep parentheses may nest: a guard, the service's filters are flat.
const MAX_DEPTH: usize = 16;

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    text: &'a str,
    fields: &'a [(&'a str, Field)],
    depth: usize,
}

impl Parser<'_> {
    fn keyword(&mut self, word: &str) -> bool {
        let found = matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word));
        if found {
            self.at += 1;
        }
        found
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut parts = vec![self.and()?];
        while self.keyword("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one part") } else { Filter::Or(parts) })
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut parts = vec![self.primary()?];
        while self.keyword("and") {
            parts.push(self.primary()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one part") } else { Filter::And(parts) })
    }

    fn primary(&mut self) -> Result<Filter, String> {
        let s = self.text;
        if matches!(self.tokens.get(self.at), Some(Token::Open)) {
            self.at += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(format!("parentheses nest deeper than {MAX_DEPTH} in $filter `{s}`"));
            }
            let inner = self.or()?;
            self.depth -= 1;
            return match self.tokens.get(self.at) {
                Some(Token::Close) => {
                    self.at += 1;
                    Ok(inner)
                }
                _ => Err(format!("expected `)` in $filter `{s}`")),
            };
        }
        let [Token::Word(name), Token::Word(op), value, ..] = &self.tokens[self.at.min(self.tokens.len())..] else {
            return Err(format!("expected `property operator value` in $filter `{s}`"));
        };
        self.at += 3;
        clause(name, op, value, self.fields).map(Filter::Clause)
    }
}

/// One `name op value` clause, checked against the fields an entity allows.
fn clause(name: &str, op: &str, value: &Token, fields: &[(&str, Field)]) -> Result<Clause, String> {
    let field = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, f)| *f).ok_or_else(|| {
        let known: Vec<_> = fields.iter().map(|(n, _)| *n).collect();
        format!("could not find a property named '{name}'; this filter accepts {}", known.join(", "))
    })?;
    let op = match op.to_ascii_lowercase().as_str() {
        "eq" => Op::Eq,
        "ge" => Op::Ge,
        "gt" => Op::Gt,
        "le" => Op::Le,
        "lt" => Op::Lt,
        _ => {
            return Err(format!("operator '{op}' is not supported here; use eq (or ge, gt, le, lt on times)"));
        }
    };
    let value = match (field.is_time(), value) {
        (true, Token::Word(v) | Token::Text(v)) => Value::Time(
            parse_rfc3339(v).ok_or_else(|| format!("'{v}' is not a date-time such as 2024-05-01T00:00:00Z"))?,
        ),
        (false, Token::Text(v)) if op == Op::Eq => Value::Text(v.clone()),
        (false, Token::Text(_)) => {
            return Err(format!("operator '{op:?}' is not supported on '{name}'; use eq"));
        }
        (false, Token::Word(v)) => {
            return Err(format!("'{v}' must be a string literal in single quotes"));
        }
        (_, Token::Open | Token::Close) => return Err(format!("expected a value after '{name} {op:?}'")),
    };
    Ok(Clause { field, op, value })
}

#[derive(Debug)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        text.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => text.push(c),
                    None => return Err(format!("unterminated string literal in $filter `{s}`")),
                }
            }
            tokens.push(Token::Text(text));
        } else if c == '(' {
            chars.next();
            tokens.push(Token::Open);
        } else if c == ')' {
            chars.next();
            tokens.push(Token::Close);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '\'' || "()".contains(c) {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(Token::Word(word));
        }
    }
    Ok(tokens)
}

/// Whether a text value matches (`eq`, case-insensitively, as the service compares names and ids).
pub(crate) fn text_matches(clause_value: &Value, actual: &str) -> bool {
    matches!(clause_value, Value::Text(v) if v.eq_ignore_ascii_case(actual))
}

/// Whether a time satisfies a comparison.
pub(crate) fn time_matches(op: Op, value: &Value, actual: SystemTime) -> bool {
    let Value::Time(v) = value else { return false };
    match op {
        Op::Eq => actual == *v,
        Op::Ge => actual >= *v,
        Op::Gt => actual > *v,
        Op::Le => actual <= *v,
        Op::Lt => actual < *v,
    }
}

/// A list request's options.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub(crate) filter: Filter,
    pub(crate) top: Option<usize>,
    pub(crate) skip: usize,
}

impl ListQuery {
    /// The query as the service reads it: with the `ignore_skip` fault, `$skip` is dropped and every page is
    /// the list's first.
    pub(crate) fn served(mut self, faults: &Faults) -> ListQuery {
        if faults.ignore_skip {
            self.skip = 0;
        }
        self
    }
}

/// Why a list request's options were refused: the API error code and message.
pub(crate) type QueryError = (&'static str, String);

/// Reads `$filter`, `$top` and `$skip` from a query string.
pub(crate) fn list_query(query: Option<&str>, fields: &[(&str, Field)]) -> Result<ListQuery, QueryError> {
    let mut out = ListQuery::default();
    for (key, value) in decode_pairs(query.unwrap_or("")) {
        match key.as_str() {
            "$filter" => out.filter = parse_filter(&value, fields).map_err(|m| ("ODataError", m))?,
            "$top" => {
                let top = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| ("InvalidInput", format!("$top '{value}' is not a whole number")))?;
                if top > MAX_TOP {
                    return Err(("InvalidInput", format!("$top {top} is more than the maximum of {MAX_TOP}")));
                }
                out.top = Some(top);
            }
            "$skip" => {
                out.skip = value
                    .trim()
                    .parse()
                    .map_err(|_| ("InvalidInput", format!("$skip '{value}' is not a whole number")))?;
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        assert_eq!(
            decode_pairs("a=1&b=x%20y+z&c&%24top=5&bad=%zz"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), "".into()),
                ("$top".into(), "5".into()),
                ("bad".into(), "%zz".into())
            ]
        );
    }

    #[test]
    fn parses_filters() {
        let f = parse_filter(
            "type eq 'Offboard' and STATUS eq 'Pending' and creationDateTimeUtc ge 2024-05-01T00:00:00Z",
            ACTION_FIELDS,
        )
        .unwrap();
        let required = f.required();
        assert_eq!(required.len(), 3);
        assert_eq!(required[1].field, Field::Status);
        assert_eq!(required[2].op, Op::Ge);
        assert!(matches!(required[2].value, Value::Time(_)));
        let f = parse_filter("creationDateTimeUtc gt '2024-05-01T00:00:00Z'", ACTION_FIELDS).unwrap();
        assert!(matches!(f.required()[0].value, Value::Time(_)));
        let f = parse_filter("computerDnsName eq 'o''brien'", MACHINE_FIELDS).unwrap();
        assert_eq!(f.required()[0].value, Value::Text("o'brien".into()));
        for bad in [
            "",
            "type eq Offboard",
            "type ne 'Offboard'",
            "colour eq 'red'",
            "type eq 'Offboard' and",
            "type eq 'Offboard' or",
            "type eq 'Offb",
            "(type eq 'Offboard'",
            "type eq 'Offboard')",
            "()",
            "type eq 'Offboard' status eq 'Pending'",
            "type eq (",
            "creationDateTimeUtc ge yesterday",
            "status gt 'Pending'",
        ] {
            assert!(parse_filter(bad, ACTION_FIELDS).is_err(), "{bad}");
        }
        assert!(parse_filter(&format!("{}type eq 'a'{}", "(".repeat(40), ")".repeat(40)), ACTION_FIELDS).is_err());
    }

    #[test]
    fn or_and_parentheses_combine_as_odata_says() {
        // An action: (type, status).
        let holds = |filter: &str, kind: &str, status: &str| {
            let f = parse_filter(filter, ACTION_FIELDS).unwrap();
            f.matches(&|c: &Clause| match c.field {
                Field::Type => text_matches(&c.value, kind),
                Field::Status => text_matches(&c.value, status),
                _ => false,
            })
        };
        let either = "(type eq 'Offboard' or type eq 'OffboardMachine') and status eq 'Pending'";
        assert!(holds(either, "Offboard", "Pending"));
        assert!(holds(either, "offboardmachine", "Pending"));
        assert!(!holds(either, "Isolate", "Pending"));
        assert!(!holds(either, "OffboardMachine", "Succeeded"));
        // `and` binds tighter than `or`.
        let loose = "type eq 'Offboard' or type eq 'OffboardMachine' and status eq 'Pending'";
        assert!(holds(loose, "Offboard", "Succeeded"));
        assert!(!holds(loose, "OffboardMachine", "Succeeded"));
        assert!(holds("((type eq 'Isolate')) OR status eq 'Pending'", "Offboard", "Pending"));
        // Only clauses joined by `and` alone narrow a search.
        let f = parse_filter("machineId eq 'm' and (type eq 'a' or type eq 'b')", ACTION_FIELDS).unwrap();
        assert_eq!(f.required().iter().map(|c| c.field).collect::<Vec<_>>(), vec![Field::MachineId]);
        assert!(parse_filter("type eq 'a' or machineId eq 'm'", ACTION_FIELDS).unwrap().required().is_empty());
        assert!(Filter::default().matches(&|_: &Clause| false), "no filter matches everything");
    }

    #[test]
    fn list_options() {
        let q = list_query(Some("%24top=10000&%24skip=20&$filter=id%20eq%20%27x%27"), MACHINE_FIELDS).unwrap();
        assert_eq!((q.top, q.skip, q.filter.required().len()), (Some(10_000), 20, 1));
        assert_eq!(list_query(Some("$top=10001"), MACHINE_FIELDS).unwrap_err().0, "InvalidInput");
        assert_eq!(list_query(Some("$skip=-1"), MACHINE_FIELDS).unwrap_err().0, "InvalidInput");
        assert_eq!(list_query(Some("$filter=id eq"), MACHINE_FIELDS).unwrap_err().0, "ODataError");
        let q = list_query(Some("$top=5&$skip=20"), MACHINE_FIELDS).unwrap();
        let ignoring = Faults { ignore_skip: true, ..Faults::default() };
        assert_eq!(q.served(&ignoring).skip, 0, "the fault drops $skip");
        let q = list_query(Some("$top=5&$skip=20"), MACHINE_FIELDS).unwrap();
        assert_eq!(q.served(&Faults::default()).skip, 20);
    }
}
