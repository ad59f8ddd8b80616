//! Query strings and form bodies: URL decoding, and the small part of OData the API routes accept
//! (`$filter` with `eq`/`ge`/`gt`/`le`/`lt` clauses joined by `and`, `$top`, `$skip`).

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

/// Parses a `$filter` against the fields an entity allows. Text fields take `eq` and a quoted literal; time
/// fields take any comparison and an RFC 3339 literal, quoted or not. The error says what is wrong.
pub(crate) fn parse_filter(s: &str, fields: &[(&str, Field)]) -> Result<Vec<Clause>, String> {
    let tokens = tokenize(s)?;
    let mut clauses = Vec::new();
    let mut rest = tokens.as_slice();
    loop {
        let [Token::Word(name), Token::Word(op), value, tail @ ..] = rest else {
            return Err(format!("expected `property operator value` in $filter `{s}`"));
        };
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
        };
        clauses.push(Clause { field, op, value });
        match tail {
            [] => return Ok(clauses),
            [Token::Word(and), more @ ..] if and.eq_ignore_ascii_case("and") && !more.is_empty() => rest = more,
            _ => return Err(format!("expected `and` between clauses in $filter `{s}`")),
        }
    }
}

#[derive(Debug)]
enum Token {
    Word(String),
    Text(String),
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
        } else if "()".contains(c) {
            return Err("parentheses are not supported in $filter".into());
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
    pub(crate) filter: Vec<Clause>,
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
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].field, Field::Status);
        assert_eq!(f[2].op, Op::Ge);
        assert!(matches!(f[2].value, Value::Time(_)));
        let f = parse_filter("creationDateTimeUtc gt '2024-05-01T00:00:00Z'", ACTION_FIELDS).unwrap();
        assert!(matches!(f[0].value, Value::Time(_)));
        let f = parse_filter("computerDnsName eq 'o''brien'", MACHINE_FIELDS).unwrap();
        assert_eq!(f[0].value, Value::Text("o'brien".into()));
        for bad in [
            "",
            "type eq Offboard",
            "type ne 'Offboard'",
            "colour eq 'red'",
            "type eq 'Offboard' or status eq 'Pending'",
            "type eq 'Offboard' and",
            "type eq 'Offb",
            "(type eq 'Offboard')",
            "creationDateTimeUtc ge yesterday",
            "status gt 'Pending'",
        ] {
            assert!(parse_filter(bad, ACTION_FIELDS).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_options() {
        let q = list_query(Some("%24top=10000&%24skip=20&$filter=id%20eq%20%27x%27"), MACHINE_FIELDS).unwrap();
        assert_eq!((q.top, q.skip, q.filter.len()), (Some(10_000), 20, 1));
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
