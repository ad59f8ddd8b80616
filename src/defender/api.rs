//! Calls to the Defender for Endpoint API, each through the shared limiter and token cache, with the one
//! retry policy every call follows.
//!
//! Policy: a 429 pauses the whole pool (see [`Limiter`]'s throttling: at least `Retry-After`, seconds or an
//! HTTP-date, and longer with each 429 in a row across the pool, whatever `Retry-After` says) and the call is
//! tried again, until [`THROTTLED_IN_A_ROW_MAX`] 429s in a row for the call; 5xx, timeouts and dropped
//! connections back off exponentially with jitter, up to `max_attempts` calls, except an offboard whose call may
//! have reached the service (a timeout, a connection closed after sending: [`Failure::answer_lost`]), which is
//! never sent again here: its caller looks for the action first (`commands::run::offboard`); a 401 renews the
//! token (once per token refused,
//! see [`TokenCache::renew`]), unless the token was itself just renewed; a 404 may be tried once more (the
//! service has been seen answering 404 for machines that exist); every other 4xx is final.
//!
//! No redirect is followed (the client is built that way): a 3xx is a final failure naming where it pointed,
//! and nothing is sent there. No answer is read past a cap ([`ANSWER_MAX`], [`LIST_PAGE_MAX`] for a list
//! page): more is a final `AnswerTooLarge` failure. When renewed tokens are refused on
//! [`REFUSED_IN_A_ROW_MAX`] calls in a row, the API refuses the token: the Api turns fatal and every call
//! after fails unsent.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;
use serde::Deserialize;

pub use crate::defender::auth::ANSWER_MAX;
use crate::defender::auth::{
    AuthError, BodyError, CONNECTION_CLOSED, TIMEOUT, TokenCache, describe_transport, location_host, read_capped, size,
    transport_kind,
};
use crate::defender::calls_at_once::CallsAtOnce;
use crate::defender::limiter::{Endpoint, Limiter};
use crate::defender::timestamp;
use crate::domain::{ActionStatus, ActionType, MachineId};

/// Longest `Retry-After` taken at its word: the hourly quota can honestly ask for up to an hour.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// Longest backoff between attempts after a 5xx or a transport failure.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// 429s in a row after which a call gives up; any other answer starts the count again. They do not count
/// against `max_attempts`: they are the quota's doing, not the machine's.
pub const THROTTLED_IN_A_ROW_MAX: u32 = 20;
/// Most bytes read of a list page: `$top` is at most 10,000 (Microsoft's documentation), and a machine entry
/// with its IP addresses, tags and metadata is a few KiB; 10,000 entries of up to 13 KiB each fit.
pub const LIST_PAGE_MAX: usize = 128 << 20;
/// List pages read at once in the process, whatever the tenants or commands: a page of 10,000 machines is
/// megabytes, held whole while it is read (a run reads one page at a time; a run of many tenants, one per
/// tenant otherwise). Two, not more: the tenants of a run of many read their pages at its start, together,
/// and the pages under way (each with its connection's read buffer) were the run's peak of memory; two keep
/// a start of 100 tenants as quick as four did (figure 7).
///
/// A page waits for its turn once its answer has begun to come (its status and headers), to read the body:
/// not while the service takes its time to answer, which costs no memory, so that a slow service does not
/// hold the tenants' pre-flights back one behind another. An answer that says it is small (a
/// `Content-Length` of at most [`SMALL_PAGE`], as an empty list or a few open actions are) does not wait at
/// all. Such a call is timed by [`Api::call_at`] rather than by the client: the wait for its turn is
/// not the service's time, and does not count against the timeout.
const PAGES_AT_ONCE: usize = 2;
static PAGES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PAGES_AT_ONCE);
/// The most a list page may say it holds and still be read without waiting for its turn ([`PAGES_AT_ONCE`]):
/// 100 tenants reading such pages at once hold 6.4 MiB at most.
const SMALL_PAGE: u64 = 64 << 10;
/// Calls in a row answered 401 with a token just renewed after which the API is taken to refuse the token.
pub const REFUSED_IN_A_ROW_MAX: u32 = 3;
/// Renewals one call may ask for (one per token it had refused): a bound, whatever other workers do.
const RENEWALS_PER_CALL_MAX: u32 = 2;
/// The error code of a failure whose answer was larger than its cap.
pub const ANSWER_TOO_LARGE: &str = "AnswerTooLarge";
/// The error code of an offboard whose 2xx answer did not show the action it may have created: `--resume`
/// looks such a machine's actions up before calling it again.
pub const UNCONFIRMED_ANSWER: &str = "UnconfirmedAnswer";

/// A successful answer (2xx).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: bytes::Bytes,
}

/// The final failure of a call, as it goes into a results row.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The HTTP status, or `None` when no answer came.
    pub status: Option<u16>,
    /// The service's error code (`ResourceNotFound`, ...), or what the transport did (`Timeout`, ...).
    pub code: String,
    pub message: String,
}

impl Failure {
    /// Whether the call may have reached the service without its answer reaching us: it timed out, or the
    /// connection closed after it was sent. (A connection that could not be made sent nothing.)
    pub fn answer_lost(&self) -> bool {
        self.status.is_none() && (self.code == TIMEOUT || self.code == CONNECTION_CLOSED)
    }

    /// Whether the answer carried the service's JSON error with a code (see [`http_failure`]), rather than a
    /// page from something that is not the API.
    pub fn is_service_error(&self) -> bool {
        self.status.is_some_and(|status| self.code != format!("HTTP{status}"))
    }
}

/// What one logical call ended in, and how many HTTP requests it took.
#[derive(Debug)]
pub struct CallResult {
    pub attempts: u32,
    pub answer: Result<Reply, Failure>,
}

/// How a call is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub retry_delay: Duration,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A MachineAction as the service returns it: the fields this tool reads (unknown ones are ignored, and any
/// may be missing).
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct MachineAction {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<ActionType>,
    #[serde(default)]
    pub status: Option<ActionStatus>,
    #[serde(default)]
    pub machine_id: Option<String>,
    #[serde(default)]
    pub requestor_comment: Option<String>,
    #[serde(default)]
    pub computer_dns_name: Option<String>,
    #[serde(default)]
    pub creation_date_time_utc: Option<String>,
    #[serde(default)]
    pub last_update_date_time_utc: Option<String>,
    /// Some of Microsoft's pages spell it this way: read both.
    #[serde(default)]
    pub last_update_time_utc: Option<String>,
}

impl MachineAction {
    /// When the action last changed, under either spelling.
    pub fn updated_at(&self) -> Option<&String> {
        self.last_update_date_time_utc.as_ref().or(self.last_update_time_utc.as_ref())
    }

    /// Whether this is an offboard action: of either type in [`OFFBOARD_TYPES`], or of no stated type (the
    /// list it came from was filtered by [`OFFBOARD_TYPE_FILTER`]).
    pub fn is_offboard(&self) -> bool {
        self.kind.as_ref().is_none_or(ActionType::is_offboard)
    }
}

/// A MachineAction as an action call's answer holds it ([`read_answer`]): the fields of [`MachineAction`],
/// read and type-checked alike, their text borrowed from the answer (no allocation for a field nobody
/// keeps). [`ActionAnswer::into_owned`] makes the [`MachineAction`].
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ActionAnswer<'a> {
    #[serde(default, borrow)]
    pub id: Option<Text<'a>>,
    #[serde(default, borrow, rename = "type")]
    pub kind: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub status: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub machine_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub requestor_comment: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub computer_dns_name: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub creation_date_time_utc: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub last_update_date_time_utc: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub last_update_time_utc: Option<Text<'a>>,
    /// Not an action's field: whether the JSON has an `error` member (other than `null`), so that
    /// [`read_answer`] reads an action's answer in one pass and leaves anything with an error to the
    /// careful reading.
    #[serde(default, rename = "error")]
    error_member: Option<serde::de::IgnoredAny>,
}

/// A JSON string of an answer: borrowed from the answer unless it holds escapes. (A `Cow<str>` inside an
/// `Option` would always be copied: serde borrows only a `Cow` that is the field itself.)
#[derive(Debug)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'a> From<&'a str> for Text<'a> {
    fn from(text: &'a str) -> Self {
        Text(Cow::Borrowed(text))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        // What `String` takes (a JSON string and nothing else), as `MachineAction` reads it.
        deserializer.deserialize_string(Visitor)
    }
}

impl ActionAnswer<'_> {
    /// When the action last changed, under either spelling.
    pub fn updated_at(&self) -> Option<&str> {
        self.last_update_date_time_utc.as_deref().or(self.last_update_time_utc.as_deref())
    }

    pub fn into_owned(self) -> MachineAction {
        let owned = |text: Option<Text<'_>>| text.map(|text| text.0.into_owned());
        MachineAction {
            id: owned(self.id),
            kind: self.kind.as_deref().map(ActionType::parse),
            status: self.status.as_deref().map(ActionStatus::parse),
            machine_id: owned(self.machine_id),
            requestor_comment: owned(self.requestor_comment),
            computer_dns_name: owned(self.computer_dns_name),
            creation_date_time_utc: owned(self.creation_date_time_utc),
            last_update_date_time_utc: owned(self.last_update_date_time_utc),
            last_update_time_utc: owned(self.last_update_time_utc),
        }
    }
}

/// The types of an offboard action, which [`OFFBOARD_TYPE_FILTER`] asks for.
pub use crate::domain::OFFBOARD_TYPES;
/// The `$filter` clause that selects offboard actions of either type, for every list of actions: a service
/// that stores the legacy type would not return its actions for `type eq 'Offboard'`.
pub const OFFBOARD_TYPE_FILTER: &str = "(type eq 'Offboard' or type eq 'OffboardMachine')";

/// The path [`Api`]'s offboard URLs are made from (see [`offboard_url`]).
const OFFBOARD_TEMPLATE_PATH: &str = "/api/machines/0000000000000000000000000000000000000000/offboard";

/// The call `check` probes the API with.
pub const PROBE: &str = "/api/machines?$top=1";
/// Machines one tag call may name (Microsoft's documentation).
pub const TAG_MACHINES_MAX: usize = 500;

/// Which page of a list: `$top` entries after `$skip` (the service takes `$top` up to 10,000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub top: usize,
    pub skip: usize,
}

impl Page {
    /// Page `n` (from 0) of pages of `size`.
    pub fn nth(n: usize, size: usize) -> Self {
        Page { top: size, skip: n * size }
    }
}

/// Which machines to list: every field given narrows the list. The OData `$filter` is built here, and only
/// here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineQuery {
    pub page: Page,
    /// Only machines whose last full report (`lastSeen`, about daily) is older than this.
    pub seen_before: Option<SystemTime>,
    /// Only machines in this health state (`healthStatus`: `Active`, `Inactive`, ...).
    pub health: Option<String>,
    /// Only machines on one of these platforms (`osPlatform`); none: any.
    pub os: Vec<String>,
}

impl MachineQuery {
    /// Every machine, a page at a time.
    pub fn all(page: Page) -> Self {
        MachineQuery { page, seen_before: None, health: None, os: Vec::new() }
    }

    /// The `$filter` the query sends, if it narrows the list (what `select` reports it asked for).
    pub fn filter(&self) -> Option<String> {
        let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut clauses = Vec::new();
        if let Some(at) = self.seen_before {
            clauses.push(format!("lastSeen lt {}", timestamp::format(at)));
        }
        if let Some(health) = &self.health {
            clauses.push(format!("healthStatus eq {}", quoted(health)));
        }
        match self.os.as_slice() {
            [] => {}
            [one] => clauses.push(format!("osPlatform eq {}", quoted(one))),
            many => {
                let any: Vec<String> = many.iter().map(|os| format!("osPlatform eq {}", quoted(os))).collect();
                clauses.push(format!("({})", any.join(" or ")));
            }
        }
        (!clauses.is_empty()).then(|| clauses.join(" and "))
    }
}

/// Which machine actions to list: every field given narrows the list. The OData `$filter` is built here, and
/// only here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionQuery {
    pub page: Page,
    /// Only the actions of this machine.
    pub machine: Option<String>,
    /// Only offboard actions, of either type ([`OFFBOARD_TYPE_FILTER`]).
    pub offboards: bool,
    /// Only actions in this status.
    pub status: Option<ActionStatus>,
    /// Only actions created at or after this.
    pub since: Option<SystemTime>,
}

impl ActionQuery {
    /// The offboard actions (of either type), a page at a time.
    pub fn offboards(page: Page) -> Self {
        ActionQuery { page, machine: None, offboards: true, status: None, since: None }
    }

    /// Only the actions of `machine_id`.
    pub fn of_machine(self, machine_id: impl std::fmt::Display) -> Self {
        ActionQuery { machine: Some(machine_id.to_string()), ..self }
    }

    /// Only the actions in `status`.
    pub fn in_status(self, status: ActionStatus) -> Self {
        ActionQuery { status: Some(status), ..self }
    }

    /// Only the actions created at or after `since`, when given.
    pub fn created_since(self, since: Option<SystemTime>) -> Self {
        ActionQuery { since, ..self }
    }

    fn filter(&self) -> Option<String> {
        let mut clauses = Vec::new();
        if let Some(machine) = &self.machine {
            clauses.push(format!("machineId eq '{}'", machine.replace('\'', "''")));
        }
        if self.offboards {
            clauses.push(OFFBOARD_TYPE_FILTER.to_string());
        }
        if let Some(status) = &self.status {
            clauses.push(format!("status eq '{}'", status.as_str().replace('\'', "''")));
        }
        if let Some(since) = self.since {
            clauses.push(format!("creationDateTimeUtc ge {}", timestamp::format(since)));
        }
        (!clauses.is_empty()).then(|| clauses.join(" and "))
    }
}

/// What a tag call does with its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagChange {
    Add,
    Remove,
}

impl TagChange {
    /// As the API spells it (`Action`).
    pub fn as_str(self) -> &'static str {
        match self {
            TagChange::Add => "Add",
            TagChange::Remove => "Remove",
        }
    }
}

/// A page of an OData collection: only `value` is used, and it must be there (a 2xx without it, such as
/// `{"error": ...}`, is not a page).
#[derive(Deserialize)]
pub struct ListPage<T> {
    pub value: Vec<T>,
}

/// Reads a page of an OData collection as [`ListPage`] does (an object whose `value` must be there), but
/// hands each entry of `value` to `each` as soon as it is parsed instead of collecting them: the entries of
/// a page of 10,000 machines are never held all at once. Returns how many there were, or why the body is
/// not a page (the entries before a fault were handed over already).
pub fn each_in_page<'de, T: Deserialize<'de>>(body: &'de [u8], each: impl FnMut(T)) -> Result<usize, String> {
    use serde::de::DeserializeSeed;
    // As text when it is text, as [`read_answer`] reads an answer: one check of the whole page.
    fn read<'de, R: serde_json::de::Read<'de>, T: Deserialize<'de>>(
        mut json: serde_json::Deserializer<R>,
        each: impl FnMut(T),
    ) -> Result<usize, String> {
        let count = page::EachInPage::new(each).deserialize(&mut json).map_err(|e| e.to_string())?;
        json.end().map_err(|e| e.to_string())?;
        Ok(count)
    }
    match std::str::from_utf8(body) {
        Ok(text) => read(serde_json::Deserializer::from_str(text), each),
        Err(_) => read(serde_json::Deserializer::from_slice(body), each),
    }
}

/// [`each_in_page`], each entry read by `entry` (a hand reader, see [`plain::Cursor`]) where it can be: a page
/// of the service's usual shape is read by hand at a fraction of serde's cost. Where `entry` gives up (`None`)
/// or the page is not of that shape, serde reads the page and hands over the entries after those handed over
/// already: `entry` must read an entry only where serde reads the same one (its callers test that), and then
/// the entries handed over, their count and any error are exactly [`each_in_page`]'s.
pub fn each_in_page_by_hand<'de, T: Deserialize<'de>>(
    body: &'de [u8],
    entry: impl FnMut(&mut plain::Cursor<'de>) -> Option<T>,
    mut each: impl FnMut(T),
) -> Result<usize, String> {
    let Ok(text) = std::str::from_utf8(body) else { return each_in_page(body, each) };
    let mut handed = 0;
    if plain::page(text, entry, |t| {
        handed += 1;
        each(t)
    }) {
        return Ok(handed);
    }
    let mut skip = handed;
    each_in_page(body, |t| match skip {
        0 => each(t),
        _ => skip -= 1,
    })
}

/// An action's answer as the service writes it, read by hand at a fraction of serde's cost (a run reads one
/// a machine): a JSON object whose strings hold no escapes, whose numbers are integers, nested at most
/// [`plain::DEPTH_MAX`] deep, whose action fields are strings or `null`, each at most once, and with no
/// `error` member other than `null`. [`read`](plain::read) gives up (`None`) on anything else, and on
/// anything that is not JSON, and serde reads it: where it does read an answer, serde reads the same
/// ([`ActionAnswer`]; a test compares the two on many answers).
pub mod plain {
    use std::borrow::Cow;

    use super::{ActionAnswer, Text};

    /// Deepest nesting read by hand (the answer's own object is 1).
    pub const DEPTH_MAX: usize = 8;
    /// The nesting of an entry of a page ([`page`]): the page is 1, its `value` array 2.
    pub const ENTRY_DEPTH: usize = 3;

    /// A page of a collection as the service writes it (see [`super::each_in_page_by_hand`]): an object
    /// with one `value` array, each of its entries read by `entry` and handed to `each`, every other member
    /// any value of the subset read by hand. Whether the whole page was read: when not, the entries handed
    /// over are those before the first one not read by hand.
    pub fn page<'a, T>(
        text: &'a str,
        mut entry: impl FnMut(&mut Cursor<'a>) -> Option<T>,
        mut each: impl FnMut(T),
    ) -> bool {
        let mut at = Cursor::new(text);
        let mut value = false;
        let read = at.object(1, |key, at| {
            if key != "value" {
                return at.value(1);
            }
            if value {
                return None;
            }
            value = true;
            at.array(|at| {
                each(entry(at)?);
                Some(())
            })
        });
        read.is_some() && value && at.end()
    }

    /// The answer in `text`, or `None` to leave it to serde.
    pub fn read(text: &str) -> Option<ActionAnswer<'_>> {
        let mut at = Cursor { text, at: 0 };
        let mut answer = ActionAnswer::default();
        // The action fields met so far (one bit each), and `error`: a second of any is serde's to refuse.
        let mut seen = 0u16;
        at.space();
        at.eat(b'{')?;
        at.space();
        if at.eat(b'}').is_none() {
            loop {
                let key = at.string()?;
                at.space();
                at.eat(b':')?;
                at.space();
                let (bit, field) = match key {
                    "id" => (0, Some(&mut answer.id)),
                    "type" => (1, Some(&mut answer.kind)),
                    "status" => (2, Some(&mut answer.status)),
                    "machineId" => (3, Some(&mut answer.machine_id)),
                    "requestorComment" => (4, Some(&mut answer.requestor_comment)),
                    "computerDnsName" => (5, Some(&mut answer.computer_dns_name)),
                    "creationDateTimeUtc" => (6, Some(&mut answer.creation_date_time_utc)),
                    "lastUpdateDateTimeUtc" => (7, Some(&mut answer.last_update_date_time_utc)),
                    "lastUpdateTimeUtc" => (8, Some(&mut answer.last_update_time_utc)),
                    "error" => (9, None),
                    _ => (16, None),
                };
                if bit < 16 {
                    if seen & (1 << bit) != 0 {
                        return None;
                    }
                    seen |= 1 << bit;
                }
                match field {
                    Some(field) if at.literal("null") => *field = None,
                    Some(field) => *field = Some(Text(Cow::Borrowed(at.string()?))),
                    // An `error` member: only `null` leaves the answer an action.
                    None if bit == 9 => {
                        if !at.literal("null") {
                            return None;
                        }
                    }
                    None => at.value(1)?,
                }
                at.space();
                if at.eat(b',').is_some() {
                    at.space();
                    continue;
                }
                at.eat(b'}')?;
                break;
            }
        }
        at.space();
        (at.at == text.len()).then_some(answer)
    }

    /// A place in a JSON text read by hand: each reading takes what it reads, or gives up (`None`, `false`) on
    /// anything outside the subset read by hand (escapes, fractions, exponents, control characters in
    /// strings, nesting past [`DEPTH_MAX`]), leaving the text to serde.
    pub struct Cursor<'a> {
        text: &'a str,
        at: usize,
    }

    impl<'a> Cursor<'a> {
        pub fn new(text: &'a str) -> Self {
            Cursor { text, at: 0 }
        }

        #[inline]
        fn peek(&self) -> Option<u8> {
            self.text.as_bytes().get(self.at).copied()
        }

        /// JSON's whitespace.
        #[inline]
        fn space(&mut self) {
            while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
                self.at += 1;
            }
        }

        /// Whether only whitespace is left.
        pub fn end(&mut self) -> bool {
            self.space();
            self.at == self.text.len()
        }

        /// An object `depth` levels in (from 1), whitespace around it included: `member` reads each member's
        /// value (any value at most [`DEPTH_MAX`] deep), given its key.
        pub fn object(&mut self, depth: usize, mut member: impl FnMut(&'a str, &mut Self) -> Option<()>) -> Option<()> {
            if depth > DEPTH_MAX {
                return None;
            }
            self.space();
            self.eat(b'{')?;
            self.space();
            if self.eat(b'}').is_some() {
                return Some(());
            }
            loop {
                let key = self.string()?;
                self.space();
                self.eat(b':')?;
                self.space();
                member(key, self)?;
                self.space();
                if self.eat(b',').is_some() {
                    self.space();
                    continue;
                }
                return self.eat(b'}');
            }
        }

        /// An array (at whose `[` the cursor is): `item` reads each item.
        pub fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
            self.eat(b'[')?;
            self.space();
            if self.eat(b']').is_some() {
                return Some(());
            }
            loop {
                item(self)?;
                self.space();
                if self.eat(b',').is_some() {
                    self.space();
                    continue;
                }
                return self.eat(b']');
            }
        }

        /// A string or `null` (what serde reads as an `Option` of a string).
        #[inline]
        pub fn string_or_null(&mut self) -> Option<Option<&'a str>> {
            if self.null() { Some(None) } else { self.string().map(Some) }
        }

        /// Takes `null` if it is next.
        #[inline]
        pub fn null(&mut self) -> bool {
            self.literal("null")
        }

        /// Takes `b` if it is next.
        #[inline]
        fn eat(&mut self, b: u8) -> Option<()> {
            (self.peek() == Some(b)).then(|| self.at += 1)
        }

        #[inline]
        fn literal(&mut self, word: &str) -> bool {
            let found = self.text.as_bytes()[self.at..].starts_with(word.as_bytes());
            if found {
                self.at += word.len();
            }
            found
        }

        /// A string without escapes or control characters: its text.
        #[inline(always)]
        pub fn string(&mut self) -> Option<&'a str> {
            const ONES: u64 = u64::from_le_bytes([1; 8]);
            const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
            // The high bit of each byte of `word` below `n` (at most 0x80), exact up to the first such byte
            // (the bytes equal to 0 are those below 1).
            let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
            self.eat(b'"')?;
            let bytes = self.text.as_bytes();
            let start = self.at;
            let mut end = start;
            // Eight bytes at a time, to the first that ends the string or is not read by hand (a quote, a
            // backslash, a control character): the lowest bit set marks it.
            loop {
                let Some(word) = bytes.get(end..end + 8) else {
                    // The last few bytes of the text, one at a time.
                    while !matches!(*bytes.get(end)?, b'"' | b'\\' | 0..0x20) {
                        end += 1;
                    }
                    break;
                };
                let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
                let found = below(word ^ (ONES * u64::from(b'"')), 1)
                    | below(word ^ (ONES * u64::from(b'\\')), 1)
                    | below(word, 0x20);
                if found != 0 {
                    end += found.trailing_zeros() as usize / 8;
                    break;
                }
                end += 8;
            }
            if bytes[end] != b'"' {
                return None;
            }
            self.at = end + 1;
            Some(&self.text[start..end])
        }

        /// Any value of the subset read by hand, `depth` levels in.
        pub fn value(&mut self, depth: usize) -> Option<()> {
            match self.peek()? {
                b'"' => self.string().map(drop),
                b'-' | b'0'..=b'9' => self.integer(),
                b't' => self.literal("true").then_some(()),
                b'f' => self.literal("false").then_some(()),
                b'n' => self.literal("null").then_some(()),
                b'[' if depth < DEPTH_MAX => {
                    self.at += 1;
                    self.space();
                    if self.eat(b']').is_some() {
                        return Some(());
                    }
                    loop {
                        self.value(depth + 1)?;
                        self.space();
                        if self.eat(b',').is_some() {
                            self.space();
                            continue;
                        }
                        return self.eat(b']');
                    }
                }
                b'{' if depth < DEPTH_MAX => {
                    self.at += 1;
                    self.space();
                    if self.eat(b'}').is_some() {
                        return Some(());
                    }
                    loop {
                        self.string()?;
                        self.space();
                        self.eat(b':')?;
                        self.space();
                        self.value(depth + 1)?;
                        self.space();
                        if self.eat(b',').is_some() {
                            self.space();
                            continue;
                        }
                        return self.eat(b'}');
                    }
                }
                _ => None,
            }
        }

        /// `-?(0|[1-9][0-9]*)`, not followed by a fraction or an exponent (left to serde).
        fn integer(&mut self) -> Option<()> {
            let _ = self.eat(b'-');
            match self.peek()? {
                b'0' => self.at += 1,
                b'1'..=b'9' => {
                    while let Some(b'0'..=b'9') = self.peek() {
                        self.at += 1;
                    }
                }
                _ => return None,
            }
            match self.peek() {
                Some(b'.' | b'e' | b'E' | b'0'..=b'9') => None,
                _ => Some(()),
            }
        }
    }

    /// Variants of `bytes` for the differential tests of the hand readers: itself, and each byte replaced by
    /// a JSON-significant one, removed, cut there, or preceded by a control character.
    #[cfg(test)]
    pub(crate) fn variants(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut cases = vec![bytes.to_vec()];
        for at in 0..bytes.len() {
            for b in *br#"{}[]:,"\ 0-.e1an"# {
                let mut changed = bytes.to_vec();
                changed[at] = b;
                cases.push(changed);
            }
            cases.push([&bytes[..at], &bytes[at + 1..]].concat());
            cases.push(bytes[..at].to_vec());
            cases.push([&bytes[..at], b"\x01", &bytes[at..]].concat());
        }
        cases
    }
}

/// The visitors of [`each_in_page`].
mod page {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserialize;
    use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// The page object: `value` read entry by entry, every other member skipped.
    pub struct EachInPage<T, F> {
        each: F,
        entry: PhantomData<fn() -> T>,
    }

    impl<T, F> EachInPage<T, F> {
        pub fn new(each: F) -> Self {
            EachInPage { each, entry: PhantomData }
        }
    }

    impl<'de, T: Deserialize<'de>, F: FnMut(T)> DeserializeSeed<'de> for EachInPage<T, F> {
        type Value = usize;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
            deserializer.deserialize_map(self)
        }
    }

    impl<'de, T: Deserialize<'de>, F: FnMut(T)> Visitor<'de> for EachInPage<T, F> {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a page of a collection (an object with a `value` array)")
        }

        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<usize, A::Error> {
            let mut count = None;
            while let Some(key) = map.next_key::<String>()? {
                if key != "value" {
                    map.next_value::<IgnoredAny>()?;
                } else if count.is_some() {
                    return Err(de::Error::duplicate_field("value"));
                } else {
                    count = Some(map.next_value_seed(Entries { each: &mut self.each, entry: PhantomData })?);
                }
            }
            count.ok_or_else(|| de::Error::missing_field("value"))
        }
    }

    /// The `value` array: each entry handed over as it is parsed.
    struct Entries<'f, T, F> {
        each: &'f mut F,
        entry: PhantomData<fn() -> T>,
    }

    impl<'de, T: Deserialize<'de>, F: FnMut(T)> DeserializeSeed<'de> for Entries<'_, T, F> {
        type Value = usize;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
            deserializer.deserialize_seq(self)
        }
    }

    impl<'de, T: Deserialize<'de>, F: FnMut(T)> Visitor<'de> for Entries<'_, T, F> {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of entries")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut count = 0;
            while let Some(entry) = seq.next_element::<T>()? {
                (self.each)(entry);
                count += 1;
            }
            Ok(count)
        }
    }
}

/// Whether the hand reader of the service's usual answer ([`plain`]) agrees with serde on `text`: where it
/// reads an action, serde reads the same fields and no `error` member. (The unit tests and the fuzz target
/// `action_answer` check it.)
#[doc(hidden)]
pub fn hand_reader_agrees(text: &str) -> bool {
    let Some(by_hand) = plain::read(text) else { return true };
    let fields = |x: &ActionAnswer| {
        [
            &x.id,
            &x.kind,
            &x.status,
            &x.machine_id,
            &x.requestor_comment,
            &x.computer_dns_name,
            &x.creation_date_time_utc,
            &x.last_update_date_time_utc,
            &x.last_update_time_utc,
        ]
        .map(|t| t.as_deref().map(str::to_owned))
    };
    serde_json::from_str::<ActionAnswer>(text)
        .is_ok_and(|read| read.error_member.is_none() && fields(&by_hand) == fields(&read))
}

/// The MachineAction an action call answered, if its answer shows one: JSON with a non-empty `id`. Otherwise
/// why not, in a few words on one line (the call may or may not have created an action).
pub fn read_action(body: &[u8]) -> Result<MachineAction, String> {
    read_answer(body).map(ActionAnswer::into_owned)
}

/// [`read_action`], its text borrowed from `body`.
pub fn read_answer(body: &[u8]) -> Result<ActionAnswer<'_>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty".into());
    }
    // Read straight into the types, not through a `serde_json::Value` (a map built, cloned and dropped for
    // every call). The usual answer, an action with an id and no `error` member, in one pass: the reading
    // below would take it as that action too (no error body without an `error` object).
    // Read as text when it is text (checked once, whole, not again string by string as reading bytes does):
    // where every byte is UTF-8 both readings take and refuse the same. A body that is not is read as bytes.
    let first = match std::str::from_utf8(body) {
        // The answer as the service writes it, read by hand ([`plain`]); anything else, by serde.
        Ok(text) => match plain::read(text) {
            Some(action) => Ok(action),
            None => serde_json::from_str::<ActionAnswer>(text),
        },
        Err(_) => serde_json::from_slice::<ActionAnswer>(body),
    };
    if let Ok(action) = first
        && action.error_member.is_none()
        && action.id.as_deref().is_some_and(|id| !id.trim().is_empty())
    {
        return Ok(action);
    }
    // Anything else: what is an error body is one, what is not is read as an action, and only a body that
    // is neither is checked for being JSON at all.
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        let code = error.code.unwrap_or_default();
        let message = error.message.unwrap_or_default();
        return Err(format!("the body is an error, {}", one_line(&format!("{code}: {message}"))));
    }
    match serde_json::from_slice::<ActionAnswer>(body) {
        Ok(action) if action.id.as_deref().is_some_and(|id| !id.trim().is_empty()) => Ok(action),
        Ok(_) => Err("the JSON holds no action id".into()),
        Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() => {
            Err(format!("the body is not JSON: {}", snippet(body)))
        }
        Err(e) => Err(format!("the JSON is not a MachineAction ({e})")),
    }
}

/// The start of a body, on one line, for a message.
fn snippet(body: &[u8]) -> String {
    one_line(&String::from_utf8_lossy(&body[..body.len().min(200)]))
}

/// `text` with every run of whitespace (newlines included) made one space, at most 200 characters.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(200).collect()
}

/// `path` (an absolute path, with its query if any) under `base` (a URL without query or fragment): what
/// reading the text of both, joined, gives.
fn url_under(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = base.clone();
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    match url.path().trim_end_matches('/') {
        "" => url.set_path(path),
        prefix => url.set_path(&format!("{prefix}{path}")),
    }
    url.set_query(query);
    url
}

/// The path of machine `hex`'s offboard call, `/api/machines/{hex}/offboard`, written in place (no allocation).
fn offboard_path(hex: &[u8; 40]) -> [u8; OFFBOARD_PATH_LEN] {
    let mut path = [0u8; OFFBOARD_PATH_LEN];
    let (head, rest) = path.split_at_mut(OFFBOARD_HEAD.len());
    head.copy_from_slice(OFFBOARD_HEAD.as_bytes());
    let (id, tail) = rest.split_at_mut(40);
    id.copy_from_slice(hex);
    tail.copy_from_slice(OFFBOARD_TAIL.as_bytes());
    path
}

const OFFBOARD_HEAD: &str = "/api/machines/";
const OFFBOARD_TAIL: &str = "/offboard";
const OFFBOARD_PATH_LEN: usize = OFFBOARD_HEAD.len() + 40 + OFFBOARD_TAIL.len();

/// The URL of machine `hex`'s offboard call made from `template`, the URL of another machine's: its id's
/// segment replaced. What [`url_under`] gives for the path (an id's hex digits are taken as they are); as
/// long as the template's text, a copy of it is the one allocation.
fn offboard_url(template: &reqwest::Url, hex: &str) -> reqwest::Url {
    let mut url = template.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop().pop().push(hex).push("offboard");
    }
    url
}

/// A call's JSON body, as sent.
fn json_body(value: &serde_json::Value) -> bytes::Bytes {
    serde_json::to_vec(value).expect("a JSON value serialises").into()
}

/// The body of an action call, `{"Comment": ...}`, made once: every offboard of a run sends the same.
#[derive(Clone, Debug)]
pub struct CommentBody(bytes::Bytes);

impl CommentBody {
    pub fn new(comment: &str) -> Self {
        CommentBody(json_body(&serde_json::json!({ "Comment": comment })))
    }
}

/// Counters for the summary.
#[derive(Default, Debug)]
pub struct Counters {
    pub calls: AtomicU64,
    pub throttled: AtomicU64,
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    /// `base` read as a URL once: each call's URL is a copy with its path and query set, not the whole
    /// text read again (host and all) for every call. `None` when `base` is not a URL to put paths under
    /// (settings refuse that before any call): the text then goes to the client as it is.
    base_url: Option<reqwest::Url>,
    /// The URL of an offboard call under `base_url` (of the machine whose id is all zeros): each offboard's
    /// URL is a copy with the id replaced ([`offboard_url`]).
    offboard_template: Option<reqwest::Url>,
    tokens: Arc<TokenCache>,
    limiter: Arc<Limiter>,
    policy: RetryPolicy,
    pub counters: Counters,
    /// Set when sign-in fails for good mid-run, or the API refuses the token: every call after it fails
    /// without being sent.
    fatal: OnceLock<AuthError>,
    /// Calls in a row whose last answer was a 401 to a token just renewed; any other answer resets it.
    refused_in_a_row: AtomicU32,
    /// Set on interrupt: no call starts or is retried after it; waits for the limiter or a backoff end.
    cancelled: AtomicBool,
    cancel: tokio::sync::Notify,
    /// The bound on calls in flight this API shares with other sessions' (the tenants of a run), if any.
    in_flight: Option<Arc<CallsAtOnce>>,
    /// How long a call may take, the client's timeout: a list page's call keeps it itself ([`PAGES_AT_ONCE`]).
    timeout: Duration,
}

/// A call whose answer did not come whole: the connection failed or closed, or it timed out.
enum Lost {
    Transport(reqwest::Error),
    /// A call timed by [`Api::call_at`] itself (a list page) took longer than the timeout.
    TimedOut,
}

/// A list page's body not read ([`Api::read_page`]).
enum Unread {
    Body(BodyError),
    TimedOut,
}

/// The client's timeout of a call that keeps its own ([`PAGES_AT_ONCE`]): a day, past the longest timeout
/// the settings take (an hour), so that only the call's own clock ends it.
const UNTIMED: Duration = Duration::from_secs(24 * 3600);

enum Step {
    Done(Result<Reply, Failure>),
    /// Try again after waiting this long (outside the limiter).
    Retry(Duration),
}

impl Api {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        tokens: Arc<TokenCache>,
        limiter: Arc<Limiter>,
        policy: RetryPolicy,
        timeout: Duration,
    ) -> Self {
        let base = base.trim_end_matches('/').to_string();
        let base_url = reqwest::Url::parse(&base)
            .ok()
            .filter(|url| !url.cannot_be_a_base() && url.query().is_none() && url.fragment().is_none());
        let offboard_template = base_url.as_ref().map(|base| url_under(base, OFFBOARD_TEMPLATE_PATH));
        Api {
            http,
            base,
            base_url,
            offboard_template,
            tokens,
            limiter,
            policy,
            counters: Counters::default(),
            fatal: OnceLock::new(),
            refused_in_a_row: AtomicU32::new(0),
            cancelled: AtomicBool::new(false),
            cancel: tokio::sync::Notify::new(),
            in_flight: None,
            timeout,
        }
    }

    /// Each call waits, after its quota's permit and before it is sent, for one of `in_flight`'s permits,
    /// held until its answer is read: a bound on calls at once shared with other sessions' APIs.
    pub fn sharing(mut self, in_flight: Arc<CallsAtOnce>) -> Self {
        self.in_flight = Some(in_flight);
        self
    }

    /// Stops every call that has not been sent: they end as `Interrupted` failures. Calls in flight finish.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_waiters();
    }

    fn interrupted(attempts: u32) -> CallResult {
        CallResult {
            attempts,
            answer: Err(Failure {
                status: None,
                code: "Interrupted".into(),
                message: "the run was interrupted before this machine's call was sent; --resume retries it".into(),
            }),
        }
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// Most calls a call makes for the retry policy (the policy's `max_attempts`).
    pub fn max_attempts(&self) -> u32 {
        self.policy.max_attempts
    }

    /// Why calls stopped being sent, if they did: sign-in failed for good ([`AuthError::Refused`], ...) or
    /// the API refuses the token ([`AuthError::ApiRefusesToken`]).
    pub fn fatal(&self) -> Option<&AuthError> {
        self.fatal.get()
    }

    /// `POST /api/machines/{id}/offboard` with the required `Comment`.
    pub async fn offboard(&self, machine_id: &MachineId, comment: &str) -> CallResult {
        self.offboard_with(machine_id, &CommentBody::new(comment)).await
    }

    /// [`Api::offboard`] with its body made once for every machine of a run.
    pub async fn offboard_with(&self, machine_id: &MachineId, body: &CommentBody) -> CallResult {
        let hex = machine_id.hex();
        let path = offboard_path(&hex);
        let path = std::str::from_utf8(&path).expect("the path is ASCII");
        let hex = std::str::from_utf8(&hex).expect("hexadecimal digits are ASCII");
        let url = self.offboard_template.as_ref().map(|template| offboard_url(template, hex));
        self.call_at(Endpoint::Offboard, reqwest::Method::POST, path, url, Some(&body.0), true, ANSWER_MAX).await
    }

    /// `GET /api/machines/{id}`: one machine (a 404 is tried once more: see the module's policy).
    pub async fn get_machine(&self, machine_id: &str) -> CallResult {
        let path = format!("/api/machines/{machine_id}");
        self.call(Endpoint::GetMachine, reqwest::Method::GET, &path, None, true, ANSWER_MAX).await
    }

    /// [`PROBE`]: the cheapest read there is, its answer as it came (a 404 is not tried again, nor read as an
    /// empty list): what `check` asks to see that the API host answers and takes the token.
    pub async fn probe(&self) -> CallResult {
        self.call(Endpoint::ListMachines, reqwest::Method::GET, PROBE, None, false, ANSWER_MAX).await
    }

    /// One page of the inventory, `GET /api/machines`, narrowed by `query`; `read` reads the body in place (a
    /// page of 10,000 machines is megabytes). See [`Api::list_page`] for paging and empty lists.
    pub async fn list_machines<R>(
        &self,
        query: &MachineQuery,
        read: impl FnOnce(&[u8]) -> Result<R, String>,
    ) -> (u32, Result<R, Failure>) {
        self.list_page(Endpoint::ListMachines, "/api/machines", query.filter().as_deref(), query.page, read).await
    }

    /// One page of the machine actions, `GET /api/machineactions`, narrowed by `query`. The `u32` counts the
    /// HTTP calls.
    pub async fn list_actions(&self, query: &ActionQuery) -> (u32, Result<Vec<MachineAction>, Failure>) {
        self.list_page(Endpoint::ListActions, "/api/machineactions", query.filter().as_deref(), query.page, |body| {
            serde_json::from_slice::<ListPage<MachineAction>>(body).map(|p| p.value).map_err(|e| e.to_string())
        })
        .await
    }

    /// `POST /api/machineactions/{id}/cancel` with the required `Comment`: cancels an action not yet final
    /// (`Machine.Offboard` is enough for an offboard). A 404 (an unknown action) is final.
    pub async fn cancel_action(&self, action_id: &str, comment: &str) -> CallResult {
        let body = serde_json::json!({ "Comment": comment });
        let path = format!("/api/machineactions/{action_id}/cancel");
        self.call(Endpoint::CancelAction, reqwest::Method::POST, &path, Some(&json_body(&body)), false, ANSWER_MAX)
            .await
    }

    /// `POST /api/machines/{id}/tags`: adds a tag to one machine, or removes it (`Machine.ReadWrite.All`).
    pub async fn tag_machine(&self, machine_id: &str, tag: &str, change: TagChange) -> CallResult {
        let body = serde_json::json!({ "Value": tag, "Action": change.as_str() });
        let path = format!("/api/machines/{machine_id}/tags");
        self.call(Endpoint::Tags, reqwest::Method::POST, &path, Some(&json_body(&body)), true, ANSWER_MAX).await
    }

    /// `POST /api/machines/AddOrRemoveTagForMultipleMachines`: adds a tag to many machines, or removes it,
    /// [`TAG_MACHINES_MAX`] per call (Microsoft's documentation); one result per call, in order.
    pub async fn tag_machines(&self, machine_ids: &[String], tag: &str, change: TagChange) -> Vec<CallResult> {
        let mut results = Vec::with_capacity(machine_ids.len().div_ceil(TAG_MACHINES_MAX));
        for ids in machine_ids.chunks(TAG_MACHINES_MAX) {
            let body = serde_json::json!({ "Value": tag, "Action": change.as_str(), "MachineIds": ids });
            let path = "/api/machines/AddOrRemoveTagForMultipleMachines";
            let body = json_body(&body);
            results.push(self.call(Endpoint::Tags, reqwest::Method::POST, path, Some(&body), false, ANSWER_MAX).await);
        }
        results
    }

    /// One page of a list: `GET {path}?$top={top}&$skip={skip}` and, when given, `$filter` (encoded here); `read`
    /// reads the body. `@odata.nextLink` is not followed (it has been seen malformed and never ending; the
    /// caller pages with `$skip`). A 404 is an empty list (`{"value": []}`) once the usual second try also
    /// answers 404: the service has been seen answering an empty list that way; but only the service's own JSON
    /// error: any other 404 (an HTML page from a wrong base URL or a proxy) is a failure, the list was not read.
    /// The `u32` counts the HTTP calls.
    async fn list_page<R>(
        &self,
        endpoint: Endpoint,
        path: &str,
        filter: Option<&str>,
        page: Page,
        read: impl FnOnce(&[u8]) -> Result<R, String>,
    ) -> (u32, Result<R, Failure>) {
        let mut query = format!("{path}?$top={}&$skip={}", page.top, page.skip);
        if let Some(filter) = filter {
            query.push_str("&$filter=");
            query.push_str(&percent_encode(filter));
        }
        let CallResult { attempts, answer } =
            self.call(endpoint, reqwest::Method::GET, &query, None, true, LIST_PAGE_MAX).await;
        let unreadable = |status: u16, message: String| Failure {
            status: Some(status),
            code: "UnreadableAnswer".into(),
            message: format!("the list answer is not the expected JSON ({message})"),
        };
        let page = match answer {
            Ok(reply) => read(&reply.body).map_err(|e| unreadable(reply.status, e)),
            Err(failure)
                if failure.status == Some(404) && failure.code != ANSWER_TOO_LARGE && failure.is_service_error() =>
            {
                read(br#"{"value":[]}"#).map_err(|e| unreadable(404, e))
            }
            Err(failure) => Err(failure),
        };
        (attempts, page)
    }

    /// One logical call to `endpoint` (whose ledger paces it) with the retry policy.
    async fn call(
        &self,
        endpoint: Endpoint,
        method: reqwest::Method,
        path: &str,
        body: Option<&bytes::Bytes>,
        retry_404: bool,
        limit: usize,
    ) -> CallResult {
        self.call_at(endpoint, method, path, self.url(path), body, retry_404, limit).await
    }

    /// [`Api::call`] with the URL of `path` ([`Api::url`]) made already.
    #[allow(clippy::too_many_arguments)]
    async fn call_at(
        &self,
        endpoint: Endpoint,
        method: reqwest::Method,
        path: &str,
        url: Option<reqwest::Url>,
        body: Option<&bytes::Bytes>,
        retry_404: bool,
        limit: usize,
    ) -> CallResult {
        let mut attempts = 0u32;
        let mut failures = 0u32; // attempts that count against max_attempts
        let mut throttled = 0u32; // 429s in a row
        let mut renewals = 0u32;
        let mut retried_404 = false;
        loop {
            if let Some(e) = self.fatal.get() {
                return CallResult { attempts, answer: Err(sign_in_failure(e)) };
            }
            // The permit first, then the token: a wait for the quota can outlast a token (an hourly quota
            // against a token of about an hour), and a token taken before the wait would earn a 401 whose
            // retry spends one more call of the quota.
            let cancelled = self.cancel.notified();
            if self.cancelled.load(Ordering::SeqCst) {
                return Self::interrupted(attempts);
            }
            let permit = tokio::select! {
                permit = self.limiter.acquire(endpoint) => permit,
                _ = cancelled => return Self::interrupted(attempts),
            };
            let token = match self.tokens.get().await {
                Ok(token) => token,
                Err(e) => {
                    let failure = sign_in_failure(&e);
                    let _ = self.fatal.set(e);
                    return CallResult { attempts, answer: Err(failure) };
                }
            };
            // A list page (an answer of megabytes) is timed here: the wait for its turn among the process's
            // pages, once its answer begins, is not the service's time.
            let page = limit > ANSWER_MAX;
            let in_flight = match &self.in_flight {
                Some(calls) => Some(calls.acquire().await),
                None => None,
            };
            attempts += 1;
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
            let request = match &url {
                Some(url) => self.http.request(method.clone(), url.clone()),
                None => self.http.request(method.clone(), format!("{}{path}", self.base)),
            };
            let mut request = match token.authorization() {
                Some(authorization) => request.header(reqwest::header::AUTHORIZATION, authorization.clone()),
                None => request.header(reqwest::header::AUTHORIZATION, token.bearer()),
            };
            if page {
                // Reading it grows the connection's read buffer to hyper's most, some 400 KB, which a pooled
                // connection would keep for the rest of the run (for each tenant of a run of many): such a
                // connection is not kept.
                request = request.header(reqwest::header::CONNECTION, "close").timeout(UNTIMED);
            }
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(body.clone());
            }
            let sent_at = tokio::time::Instant::now();
            let sent = match page {
                true => match tokio::time::timeout(self.timeout, request.send()).await {
                    Ok(sent) => sent.map_err(Lost::Transport),
                    Err(_) => Err(Lost::TimedOut),
                },
                false => request.send().await.map_err(Lost::Transport),
            };
            let answer = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    if (300..400).contains(&status) {
                        // Not followed (the client follows none), and its body is not read.
                        Ok(Err(Failure {
                            status: Some(status),
                            code: "Redirect".into(),
                            message: format!(
                                "the API answered {status}, redirecting to {}; redirects are not followed and \
                                 nothing was sent there: check --api-base (or --cloud)",
                                location_host(response.headers(), &format!("{}{path}", self.base))
                            ),
                        }))
                    } else {
                        let read = match page {
                            true => self.read_page(response, limit, sent_at.elapsed()).await,
                            false => read_capped(response, limit).await.map_err(Unread::Body),
                        };
                        match read {
                            Ok(body) => Ok(Ok((status, retry_after, body))),
                            Err(Unread::Body(BodyError::TooLarge { limit })) => Ok(Err(Failure {
                                status: Some(status),
                                code: ANSWER_TOO_LARGE.into(),
                                message: format!(
                                    "the answer (HTTP {status}) is larger than {}; stopped reading it",
                                    size(limit)
                                ),
                            })),
                            Err(Unread::Body(BodyError::Transport(e))) => Err(Lost::Transport(e)),
                            Err(Unread::TimedOut) => Err(Lost::TimedOut),
                        }
                    }
                }
                Err(e) => Err(e),
            };
            // Read: the caller parses it before its task yields ([`Api::list_page`]).
            drop(in_flight);
            // The pool learns of the answer before the permit goes: a 429 pauses it (and a wait for the probe
            // ends only once the probe's verdict is in), any other answer ends its throttling.
            let pool_pause = match &answer {
                Ok(Ok((429, retry_after, _))) => Some(permit.throttled(*retry_after, self.policy.retry_delay)),
                Ok(Ok(_)) => {
                    permit.answered();
                    None
                }
                Ok(Err(failure)) if failure.status.is_some_and(|s| s != 429) => {
                    permit.answered();
                    None
                }
                _ => None,
            };
            // The answer is in (or the call failed): from now on the call holds its place one period.
            permit.finish();
            if let Ok(Ok((status, ..))) = &answer
                && *status != 401
            {
                // Any other answer: the token was taken.
                token.mark_accepted();
                self.refused_in_a_row.store(0, Ordering::Relaxed);
            }

            let step = match answer {
                // A redirect or an answer too large: final, never retried.
                Ok(Err(failure)) => {
                    tracing::debug!(%path, attempt = attempts, code = %failure.code, "call failed: {}", failure.message);
                    Step::Done(Err(failure))
                }
                Err(lost) => {
                    failures += 1;
                    let failure = match lost {
                        Lost::Transport(e) => transport_failure(&e),
                        Lost::TimedOut => Failure {
                            status: None,
                            code: TIMEOUT.into(),
                            message: format!(
                                "timed out (no answer within {})",
                                humantime::format_duration(self.timeout)
                            ),
                        },
                    };
                    tracing::debug!(%path, attempt = attempts, code = %failure.code, "call failed: {}", failure.message);
                    if endpoint == Endpoint::Offboard && failure.answer_lost() {
                        // It may have offboarded the machine: sent again blindly, it could offboard it twice
                        // (once the first action has ended, the service takes a second).
                        Step::Done(Err(failure))
                    } else if failures < self.policy.max_attempts {
                        Step::Retry(self.backoff(failures))
                    } else {
                        Step::Done(Err(failure))
                    }
                }
                Ok(Ok((status, _, body))) => {
                    tracing::trace!(%path, attempt = attempts, status, "answer");
                    if status != 429 {
                        throttled = 0;
                    }
                    match status {
                        200..=299 => Step::Done(Ok(Reply { status, body })),
                        // A token just renewed and refused again: renewing again would not help.
                        401 if token.renewal_unproven() => Step::Done(Err(self.refused(&body))),
                        401 if renewals < RENEWALS_PER_CALL_MAX => {
                            renewals += 1;
                            if let Err(e) = self.tokens.renew(&token).await {
                                let failure = sign_in_failure(&e);
                                let _ = self.fatal.set(e);
                                Step::Done(Err(failure))
                            } else {
                                Step::Retry(Duration::ZERO)
                            }
                        }
                        429 => {
                            throttled += 1;
                            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                            let wait = pool_pause.unwrap_or_default();
                            tracing::info!(%path, wait_ms = wait.as_millis() as u64, in_a_row = throttled, "throttled (429): pausing every worker");
                            if throttled < THROTTLED_IN_A_ROW_MAX {
                                // The limiter holds the retry for the pause, and for the probe.
                                Step::Retry(Duration::ZERO)
                            } else {
                                Step::Done(Err(http_failure(status, &body)))
                            }
                        }
                        404 if retry_404 && !retried_404 => {
                            retried_404 = true;
                            failures += 1;
                            Step::Retry(self.policy.retry_delay)
                        }
                        500..=599 => {
                            failures += 1;
                            if failures < self.policy.max_attempts {
                                Step::Retry(self.backoff(failures))
                            } else {
                                Step::Done(Err(http_failure(status, &body)))
                            }
                        }
                        _ => Step::Done(Err(http_failure(status, &body))),
                    }
                }
            };
            match step {
                Step::Done(answer) => return CallResult { attempts, answer },
                Step::Retry(wait) => {
                    let cancelled = self.cancel.notified();
                    if self.cancelled.load(Ordering::SeqCst) {
                        return Self::interrupted(attempts);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancelled => return Self::interrupted(attempts),
                    }
                }
            }
        }
    }

    /// Reads a list page's body ([`PAGES_AT_ONCE`]): at once when its `Content-Length` says it is small,
    /// otherwise once one of the process's page slots is free; within what is left of the timeout after
    /// `taken`, the time its answer took to begin (the wait for the slot not counted).
    async fn read_page(
        &self,
        response: reqwest::Response,
        limit: usize,
        taken: Duration,
    ) -> Result<bytes::Bytes, Unread> {
        let _slot = match response.content_length().is_some_and(|n| n <= SMALL_PAGE) {
            true => None,
            false => Some(PAGES.acquire().await.expect("the semaphore is never closed")),
        };
        match tokio::time::timeout(self.timeout.saturating_sub(taken), read_capped(response, limit)).await {
            Ok(read) => read.map_err(Unread::Body),
            Err(_) => Err(Unread::TimedOut),
        }
    }

    /// The URL of `path` (an absolute path, with its query if any) under the base: what
    /// `reqwest::Url::parse(base + path)` gives, made from the base read once.
    fn url(&self, path: &str) -> Option<reqwest::Url> {
        self.base_url.as_ref().map(|base| url_under(base, path))
    }

    /// A call ends in a 401 to a token just renewed: one more in a row, and at [`REFUSED_IN_A_ROW_MAX`] the
    /// API refuses the token (fatal).
    fn refused(&self, body: &[u8]) -> Failure {
        let refused = self.refused_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if refused >= REFUSED_IN_A_ROW_MAX {
            let e = AuthError::ApiRefusesToken { refused };
            tracing::warn!("{e}");
            let _ = self.fatal.set(e);
        }
        http_failure(401, body)
    }

    /// Exponential backoff with full jitter: a random wait up to `retry_delay * 2^(n-1)`, capped, at least
    /// half of it so retries never bunch up at zero.
    fn backoff(&self, n: u32) -> Duration {
        let ceiling = self.policy.retry_delay.saturating_mul(1 << n.saturating_sub(1).min(16)).min(BACKOFF_MAX);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

fn sign_in_failure(e: &AuthError) -> Failure {
    let code = match e {
        AuthError::ApiRefusesToken { .. } => "TokenRefused",
        _ => "SignInFailed",
    };
    Failure { status: None, code: code.into(), message: e.to_string() }
}

fn transport_failure(e: &reqwest::Error) -> Failure {
    Failure { status: None, code: transport_kind(e).0.into(), message: describe_transport(e) }
}

/// Reads the service's error body; copes with a missing or non-JSON body.
pub fn http_failure(status: u16, body: &[u8]) -> Failure {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message) = match parsed {
        Some(ErrorBody { error }) => (error.code, error.message),
        None => (None, None),
    };
    let fallback_message = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() { format!("HTTP {status} with no body") } else { text.chars().take(200).collect() }
    };
    Failure {
        status: Some(status),
        code: code.filter(|c| !c.is_empty()).unwrap_or_else(|| format!("HTTP{status}")),
        message: message.filter(|m| !m.is_empty()).unwrap_or_else(fallback_message),
    }
}

/// `Retry-After` as seconds or an HTTP-date. `None` when missing, unreadable or absurd (over an hour);
/// a date in the past or zero seconds means "now", which is taken as one second.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(secs) = value.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::try_from_secs_f64(secs).ok()?
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    if wait > RETRY_AFTER_MAX {
        return None;
    }
    Some(wait.max(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_dates_and_nonsense() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 2.5 ", now), Some(Duration::from_millis(2500)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("999999", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn filters_are_percent_encoded() {
        assert_eq!(percent_encode("type eq 'Offboard'"), "type%20eq%20%27Offboard%27");
        assert_eq!(percent_encode("a-b.c_d~e"), "a-b.c_d~e");
    }

    /// A page read entry by entry reads what the whole page's parse reads, and refuses what it refuses.
    #[test]
    fn a_page_read_entry_by_entry_reads_as_the_whole_page_does() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Entry {
            id: String,
        }
        let body =
            br#"{"@odata.context":"x","value":[{"id":"a","more":[1,{"b":2}]},{"id":"b"}],"@odata.nextLink":"y"}"#;
        let mut seen = Vec::new();
        assert_eq!(each_in_page(body, |e: Entry| seen.push(e.id)), Ok(2));
        assert_eq!(seen, ["a", "b"]);
        let whole: ListPage<Entry> = serde_json::from_slice(body).unwrap();
        assert_eq!(whole.value.into_iter().map(|e| e.id).collect::<Vec<_>>(), seen);
        assert_eq!(each_in_page(br#" {"value":[]} "#, |_: Entry| panic!("no entry")), Ok(0));
        for refused in [
            &br#"{"error":{"code":"X"}}"#[..],
            br#"{"value":[],"value":[]}"#,
            br#"{"value":{"id":"a"}}"#,
            br#"[{"id":"a"}]"#,
            br#"{"value":[{"id":"a"}]} trailing"#,
            br#"{"value":[{"id":"a"},"#,
            b"<html></html>",
        ] {
            let whole = serde_json::from_slice::<ListPage<Entry>>(refused).is_err();
            let streamed = each_in_page(refused, |_: Entry| {}).is_err();
            assert!(whole && streamed, "{}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn queries_make_the_filters_the_service_reads() {
        let page = Page::nth(2, 100);
        assert_eq!(page, Page { top: 100, skip: 200 });
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(MachineQuery::all(page).filter(), None);
        assert_eq!(
            MachineQuery { seen_before: Some(at), ..MachineQuery::all(page) }.filter().as_deref(),
            Some("lastSeen lt 2023-11-14T22:13:20.0000000Z")
        );
        let narrowed = MachineQuery {
            seen_before: Some(at),
            health: Some("Inactive".into()),
            os: vec!["Windows10".into(), "o'macOS".into()],
            ..MachineQuery::all(page)
        };
        assert_eq!(
            narrowed.filter().as_deref(),
            Some(
                "lastSeen lt 2023-11-14T22:13:20.0000000Z and healthStatus eq 'Inactive' and (osPlatform eq \
                 'Windows10' or osPlatform eq 'o''macOS')"
            )
        );
        let one = MachineQuery { os: vec!["Linux".into()], ..MachineQuery::all(page) };
        assert_eq!(one.filter().as_deref(), Some("osPlatform eq 'Linux'"));
        let offboards = ActionQuery::offboards(page);
        assert_eq!(offboards.filter().as_deref(), Some(OFFBOARD_TYPE_FILTER));
        assert_eq!(
            offboards.clone().of_machine("ab12").filter(),
            Some(format!("machineId eq 'ab12' and {OFFBOARD_TYPE_FILTER}"))
        );
        assert_eq!(
            offboards.clone().in_status(ActionStatus::Pending).filter(),
            Some(format!("{OFFBOARD_TYPE_FILTER} and status eq 'Pending'"))
        );
        assert_eq!(
            offboards.created_since(Some(at)).filter(),
            Some(format!("{OFFBOARD_TYPE_FILTER} and creationDateTimeUtc ge 2023-11-14T22:13:20.0000000Z"))
        );
        let any = ActionQuery { offboards: false, ..ActionQuery::offboards(page) };
        assert_eq!(any.clone().filter(), None);
        assert_eq!(any.of_machine("o'brien").filter().as_deref(), Some("machineId eq 'o''brien'"));
    }

    #[test]
    fn an_offboard_url_is_the_url_of_its_path_under_the_base() {
        for base in
            ["http://127.0.0.1:8080", "https://api.securitycenter.microsoft.com/", "https://h.example/prefix/v1"]
        {
            let base = reqwest::Url::parse(base).unwrap();
            let template = url_under(&base, OFFBOARD_TEMPLATE_PATH);
            for id in ["0123456789abcdef0123456789abcdef01234567", "ffffffffffffffffffffffffffffffffffffffff"] {
                let id = MachineId::parse(id).unwrap();
                let hex = id.hex();
                let path = offboard_path(&hex);
                let path = std::str::from_utf8(&path).unwrap();
                assert_eq!(path, format!("/api/machines/{id}/offboard"));
                let url = offboard_url(&template, std::str::from_utf8(&hex).unwrap());
                assert_eq!(url, url_under(&base, path), "{base} {id}");
                assert_eq!(url.as_str().len(), template.as_str().len());
            }
        }
    }

    #[test]
    fn a_url_under_the_base_is_the_url_of_the_joined_text() {
        let filter = percent_encode("machineId eq 'ab' and (type eq 'Offboard')");
        for base in ["http://127.0.0.1:8080", "https://api.securitycenter.microsoft.com", "https://h.example/prefix/v1"]
        {
            for path in [
                "/api/machines/0123456789abcdef0123456789abcdef01234567/offboard".to_string(),
                "/api/machines?$top=1".to_string(),
                format!("/api/machineactions?$top=100&$skip=0&$filter={filter}"),
                "/api/machines/o'brien x/tags".to_string(),
            ] {
                let expected = reqwest::Url::parse(&format!("{base}{path}")).unwrap();
                assert_eq!(url_under(&reqwest::Url::parse(base).unwrap(), &path), expected, "{base} {path}");
            }
        }
    }

    #[test]
    fn only_an_action_with_an_id_is_an_action() {
        let action = read_action(br#"{"id":"a1","type":"Offboard","status":"Pending"}"#).unwrap();
        assert_eq!(action.id.as_deref(), Some("a1"));
        // An `error` member that is not an error object does not make an error body.
        for body in [&br#"{"id":"a1","error":null}"#[..], br#"{"error":"x","id":"a1"}"#] {
            assert_eq!(read_action(body).unwrap().id.as_deref(), Some("a1"));
        }
        for (body, why) in [
            (&br#"{"error":{"code":"X","message":"went\nwrong"}}"#[..], "an error, X: went wrong"),
            (br#"{"id":"a1","error":{"code":"X"}}"#, "an error, X"),
            (b"<html>\n<p>hi</p></html>", "not JSON: <html> <p>hi</p></html>"),
            (b"  \n", "empty"),
            (br#"{"status":"Pending"}"#, "no action id"),
            (br#"{"id":""}"#, "no action id"),
            (br#"[1]"#, "not a MachineAction"),
        ] {
            let e = read_action(body).unwrap_err();
            assert!(e.contains(why) && !e.contains('\n'), "{e}");
        }
    }

    /// The answer is read in place, as text when it is text: escapes, non-ASCII, fields of the wrong type and
    /// bytes that are not UTF-8 are read as reading it as bytes into [`MachineAction`] reads them.
    #[test]
    fn an_answer_read_in_place_reads_as_the_owned_action() {
        let action =
            read_answer(br#"{"id":"a\"1\u00e9","status":"Pending","computerDnsName":"h\u00e9.x","x":[1]}"#).unwrap();
        assert_eq!(action.id.as_deref(), Some("a\"1é"));
        assert!(matches!(action.id.as_ref().unwrap().0, Cow::Owned(_)));
        assert_eq!(action.computer_dns_name.as_deref(), Some("hé.x"));
        let action = read_answer("{\"id\":\"zé\",\"lastUpdateTimeUtc\":\"t\"}".as_bytes()).unwrap();
        assert!(matches!(action.id.as_ref().unwrap().0, Cow::Borrowed("zé")));
        assert_eq!(action.updated_at(), Some("t"));
        let owned = action.into_owned();
        assert_eq!((owned.id.as_deref(), owned.updated_at().map(String::as_str)), (Some("zé"), Some("t")));
        // A field of the wrong type: not an action, as the owned reading says.
        for body in [&br#"{"id":"a1","machineId":5}"#[..], br#"{"id":"a1","type":null,"requestorComment":[]}"#] {
            let owned = serde_json::from_slice::<MachineAction>(body).is_ok();
            assert_eq!(read_answer(body).is_ok(), owned, "{}", String::from_utf8_lossy(body));
        }
        // Not UTF-8 where the action's fields are not: read as bytes, as before; in a field: refused.
        assert_eq!(read_answer(b"{\"id\":\"a1\",\"title\":\"\xff\"}").map(|a| a.id.is_some()), Ok(true));
        assert!(read_answer(b"{\"id\":\"a\xff\"}").is_err());
    }

    /// Wherever the answer read by hand reads an action, serde reads the same action from it: the service's
    /// answer and variants of it, each with every byte in turn replaced by a byte that matters to JSON, or cut
    /// off there.
    #[test]
    fn an_answer_read_by_hand_is_what_serde_reads() {
        let service = r#"{"@odata.context":"http://127.0.0.1:1/api/$metadata#MachineActions/$entity","id":"ea247759-11ea-4b02-8a81-901481e87b61","type":"Offboard","title":"Offboard machine","requestor":"6a1f0c2e","requestorComment":"x","status":"Pending","machineId":"746af30839d0c0925055933e73723b9339b528c8","computerDnsName":"lnx-0001.contoso.local","creationDateTimeUtc":"2026-11-30T17:18:53.7355535Z","lastUpdateDateTimeUtc":"2026-11-30T17:18:53.7355535Z","cancellationRequestor":null,"cancellationComment":null,"cancellationDateTimeUtc":null,"errorHResult":0,"scope":null,"externalId":null,"requestSource":"PublicApi","relatedFileInfo":null,"commands":[],"troubleshootInfo":null}"#;
        let variants = [
            service.to_string(),
            " \r\n\t{ \"id\" : \"a1\" , \"status\":null,\"x\":[1,-20,{\"y\":[true,false,null,{}]},[]],\"error\":null } \n".into(),
            r#"{"id":"é☃","lastUpdateTimeUtc":"t","n":-0,"m":[[[[[[[[1]]]]]]]]}"#.into(),
            r#"{"id":"a","deep":[[[[[[[1]]]]]]],"e":1.5,"f":2e3}"#.into(),
            r#"{"type":"Offboard","id":"b\"c","error":{"code":"X"}}"#.into(),
        ];
        let mut by_hand = 0;
        for variant in &variants {
            for case in plain::variants(variant.as_bytes()) {
                let Ok(text) = std::str::from_utf8(&case) else { continue };
                by_hand += usize::from(plain::read(text).is_some());
                assert!(hand_reader_agrees(text), "{text}: {:?}", serde_json::from_str::<ActionAnswer>(text));
            }
        }
        // Most variants are read by hand; the answers with escapes, fractions and `error` objects are not.
        assert!(by_hand > 1000, "{by_hand}");
        assert!(plain::read(service).is_some_and(|a| a.id.as_deref() == Some("ea247759-11ea-4b02-8a81-901481e87b61")));
        for not_by_hand in &variants[3..] {
            assert!(plain::read(not_by_hand).is_none(), "{not_by_hand}");
        }
    }

    #[test]
    fn a_list_page_without_value_is_not_a_page() {
        let read = |body: &[u8]| serde_json::from_slice::<ListPage<MachineAction>>(body).map(|p| p.value.len());
        assert_eq!(read(br#"{"value":[{"id":"a"}]}"#).unwrap(), 1);
        assert!(read(br#"{"error":{"code":"InternalServerError","message":"x"}}"#).is_err());
        assert!(read(b"{}").is_err());
    }

    #[test]
    fn error_bodies_with_and_without_json() {
        let f = http_failure(400, br#"{"error":{"code":"ActiveRequestAlreadyExists","message":"Action is already in progress","target":"x"}}"#);
        assert_eq!(
            (f.status, f.code.as_str(), f.message.as_str()),
            (Some(400), "ActiveRequestAlreadyExists", "Action is already in progress")
        );
        let f = http_failure(502, b"<html>Bad gateway</html>");
        assert_eq!((f.code.as_str(), f.message.as_str()), ("HTTP502", "<html>Bad gateway</html>"));
        let f = http_failure(503, b"");
        assert_eq!(f.message, "HTTP 503 with no body");
        let f = http_failure(400, br#"{"error":{}}"#);
        assert_eq!(f.code, "HTTP400");
    }
}
