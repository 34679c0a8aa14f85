//! LogsQL: the subset people type, parsed by hand with position-bearing errors.
//!
//! Filters: words and phrases (`error`, `"cannot open"`), `field:value`,
//! `field:"exact phrase"`, `field:=exact`, `field:=prefix*`, prefixes (`foo*`, `"foo bar"*`),
//! `*` and `field:*`, `_time:5m` and `_time:[start, end)`, `_stream:{a="b"}` (or bare
//! `{...}`), `field:(a OR b)`, AND (implicit or `and`), `or`, `not` / `-` / `!`, parentheses.
//! Pipes: `sort by (...)`, `limit N` / `head N`, `fields ...` / `keep ...`,
//! `stats [by (...)] count() [as name], ...` (also `count(field)`, `count_uniq`, `sum`,
//! `min`, `max`, `avg`), and `filter <filters>`.

use std::borrow::Cow;
use std::fmt;

use crate::record::{is_token_char, parse_stream, StoredRecord};
use crate::time::{parse_duration, parse_rfc3339, parse_time_arg, parse_timestamp};

/// A query that could not be parsed: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Character offset (0-based) into the query where the problem was found.
    pub position: usize,
    /// What is wrong there.
    pub reason: String,
    /// The query text.
    pub query: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let before: String = self.query.chars().take(self.position).collect();
        let before: String = {
            let n = before.chars().count();
            before.chars().skip(n.saturating_sub(30)).collect()
        };
        write!(
            f,
            "cannot parse LogsQL query at position {}: {} (after {:?})",
            self.position, self.reason, before
        )
    }
}

impl std::error::Error for ParseError {}

/// A comparison in a `_stream:{...}` selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOp {
    /// `name="value"`
    Eq(String),
    /// `name!="value"`
    Ne(String),
    /// `name in("a","b")`
    In(Vec<String>),
    /// `name not_in("a","b")`
    NotIn(Vec<String>),
}

/// A filter (the part of a query before the first pipe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `*`: every log.
    Any,
    /// A word or phrase inside the field's value, on word boundaries.
    Phrase { field: String, phrase: String },
    /// A word (or phrase) starting a word inside the value: `foo*`.
    Prefix { field: String, prefix: String },
    /// The whole value equals: `field:=value`.
    Exact { field: String, value: String },
    /// The whole value starts with: `field:=value*`.
    ExactPrefix { field: String, prefix: String },
    /// The field is present and non-empty: `field:*`.
    NonEmpty { field: String },
    /// `_time` in `[start, end)` (nanoseconds).
    Time { start: i64, end: i64 },
    /// `_stream:{name="value", ...}`: all matchers hold.
    Stream(Vec<(String, StreamOp)>),
    /// All hold.
    And(Vec<Filter>),
    /// One holds.
    Or(Vec<Filter>),
    /// Does not hold.
    Not(Box<Filter>),
}

/// A stats function in a `stats` pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsFunc {
    /// `count`, `count_uniq`, `sum`, `min`, `max` or `avg`.
    pub kind: String,
    /// Its arguments (empty or `*` means all fields for `count`).
    pub fields: Vec<String>,
    /// The result column name (`as name`, or the function text).
    pub name: String,
}

/// A pipe after the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pipe {
    /// `sort by (f [desc], ...) [desc] [limit N]`: (field, descending) keys.
    Sort {
        keys: Vec<(String, bool)>,
        limit: Option<usize>,
    },
    /// `limit N`.
    Limit(usize),
    /// `fields a, b`.
    Fields(Vec<String>),
    /// `stats by (...) funcs`.
    Stats {
        by: Vec<String>,
        funcs: Vec<StatsFunc>,
    },
    /// `filter ...` over the rows so far.
    Filter(Filter),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The filter.
    pub filter: Filter,
    /// The pipes, in order.
    pub pipes: Vec<Pipe>,
}

/// Something whose fields a filter can read: a stored record or an output row.
pub trait Fields {
    /// A field's value; missing reads as empty.
    fn field(&self, name: &str) -> Cow<'_, str>;
    /// `_time` in nanoseconds, when known.
    fn time_nanos(&self) -> Option<i64>;
}

impl Fields for StoredRecord {
    fn field(&self, name: &str) -> Cow<'_, str> {
        self.get(name)
    }
    fn time_nanos(&self) -> Option<i64> {
        Some(self.time)
    }
}

/// An output row: ordered (name, value) pairs.
pub type Row = Vec<(String, String)>;

impl Fields for Row {
    fn field(&self, name: &str) -> Cow<'_, str> {
        self.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
            .unwrap_or(Cow::Borrowed(""))
    }
    fn time_nanos(&self) -> Option<i64> {
        parse_timestamp(&self.field("_time"))
    }
}

fn boundary_ok_before(value: &str, at: usize, needle: &str) -> bool {
    match needle.chars().next() {
        Some(c) if is_token_char(c) => value[..at]
            .chars()
            .next_back()
            .is_none_or(|p| !is_token_char(p)),
        _ => true,
    }
}

fn boundary_ok_after(value: &str, end: usize, needle: &str) -> bool {
    match needle.chars().next_back() {
        Some(c) if is_token_char(c) => value[end..]
            .chars()
            .next()
            .is_none_or(|n| !is_token_char(n)),
        _ => true,
    }
}

/// Whether `value` holds `phrase` on word boundaries.
pub fn phrase_match(value: &str, phrase: &str) -> bool {
    if phrase.is_empty() {
        return value.is_empty();
    }
    value.match_indices(phrase).any(|(i, _)| {
        boundary_ok_before(value, i, phrase) && boundary_ok_after(value, i + phrase.len(), phrase)
    })
}

/// Whether a word of `value` starts with `prefix` (empty prefix: value non-empty).
pub fn prefix_match(value: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return !value.is_empty();
    }
    value
        .match_indices(prefix)
        .any(|(i, _)| boundary_ok_before(value, i, prefix))
}

impl Filter {
    /// Whether the record matches.
    pub fn matches<F: Fields + ?Sized>(&self, r: &F) -> bool {
        match self {
            Filter::Any => true,
            Filter::Phrase { field, phrase } => phrase_match(&r.field(field), phrase),
            Filter::Prefix { field, prefix } => prefix_match(&r.field(field), prefix),
            Filter::Exact { field, value } => r.field(field) == value.as_str(),
            Filter::ExactPrefix { field, prefix } => r.field(field).starts_with(prefix.as_str()),
            Filter::NonEmpty { field } => !r.field(field).is_empty(),
            Filter::Time { start, end } => r.time_nanos().is_some_and(|t| t >= *start && t < *end),
            Filter::Stream(matchers) => {
                let pairs = parse_stream(&r.field("_stream"));
                matchers.iter().all(|(name, op)| {
                    let v = pairs
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("");
                    match op {
                        StreamOp::Eq(x) => v == x,
                        StreamOp::Ne(x) => v != x,
                        StreamOp::In(xs) => xs.iter().any(|x| x == v),
                        StreamOp::NotIn(xs) => !xs.iter().any(|x| x == v),
                    }
                })
            }
            Filter::And(fs) => fs.iter().all(|f| f.matches(r)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(r)),
            Filter::Not(f) => !f.matches(r),
        }
    }

    /// The `[start, end)` time range outside which nothing can match.
    pub fn time_range(&self) -> (i64, i64) {
        match self {
            Filter::Time { start, end } => (*start, *end),
            Filter::And(fs) => fs.iter().fold((i64::MIN, i64::MAX), |(s, e), f| {
                let (fs, fe) = f.time_range();
                (s.max(fs), e.min(fe))
            }),
            Filter::Or(fs) if !fs.is_empty() => {
                fs.iter().fold((i64::MAX, i64::MIN), |(s, e), f| {
                    let (fs, fe) = f.time_range();
                    (s.min(fs), e.max(fe))
                })
            }
            _ => (i64::MIN, i64::MAX),
        }
    }
}

impl Query {
    /// Whether the query's output keeps stored records unchanged apart from field selection
    /// (no stats, sort or limit): required for live tailing.
    pub fn is_streamable(&self) -> bool {
        self.pipes
            .iter()
            .all(|p| matches!(p, Pipe::Fields(_) | Pipe::Filter(_)))
    }

    /// Whether the output fields come in an order the query chose (last pipe `fields` or
    /// `stats`) rather than alphabetical order.
    pub fn explicit_field_order(&self) -> bool {
        let mut explicit = false;
        for p in &self.pipes {
            match p {
                Pipe::Fields(_) | Pipe::Stats { .. } => explicit = true,
                Pipe::Sort { .. } | Pipe::Limit(_) | Pipe::Filter(_) => {}
            }
        }
        explicit
    }
}

/// Parses a LogsQL query; `now` (nanoseconds) anchors relative times like `_time:5m`.
pub fn parse(query: &str, now: i64) -> Result<Query, ParseError> {
    let mut p = Parser {
        src: query,
        chars: query.char_indices().collect(),
        i: 0,
        now,
        depth: 0,
    };
    p.skip_ws();
    let filter = if p.at_end() || p.peek() == Some('|') {
        if p.at_end() {
            return Err(p.err("empty query; use * to select all logs"));
        }
        Filter::Any
    } else {
        p.parse_or("_msg")?
    };
    let mut pipes = Vec::new();
    loop {
        p.skip_ws();
        match p.peek() {
            None => break,
            Some('|') => {
                p.i += 1;
                pipes.push(p.parse_pipe()?);
            }
            Some(')') => return Err(p.err("unexpected ')' without a matching '('")),
            Some(c) => return Err(p.err(format!("unexpected {c:?}"))),
        }
    }
    Ok(Query { filter, pipes })
}

struct Parser<'a> {
    src: &'a str,
    chars: Vec<(usize, char)>,
    i: usize,
    now: i64,
    /// Nesting of groups and negations being parsed (bounded by [`MAX_DEPTH`]).
    depth: usize,
}

/// How deep groups `( … )` and negations may nest: deeper queries are refused (400)
/// instead of exhausting the parser's stack.
pub const MAX_DEPTH: usize = 100;

/// A word or quoted string as read.
struct Lit {
    text: String,
    quoted: bool,
    star: bool,
    pos: usize,
}

const DELIMS: &[char] = &['(', ')', '|', ',', ':', '{', '}', '"', '\'', '`', '='];

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).map(|c| c.1)
    }
    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).map(|c| c.1)
    }
    fn at_end(&self) -> bool {
        self.i >= self.chars.len()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }
    fn err_at(&self, position: usize, reason: impl Into<String>) -> ParseError {
        ParseError {
            position,
            reason: reason.into(),
            query: self.src.to_string(),
        }
    }
    fn err(&self, reason: impl Into<String>) -> ParseError {
        self.err_at(self.i, reason)
    }
    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(match self.peek() {
                Some(x) => format!("expected {c:?}, found {x:?}"),
                None => format!("expected {c:?}, found the end of the query"),
            }))
        }
    }

    /// Reads a bare word or a quoted string (with a directly following `*`).
    fn lit(&mut self) -> Result<Option<Lit>, ParseError> {
        self.skip_ws();
        let pos = self.i;
        let Some(c) = self.peek() else {
            return Ok(None);
        };
        let (text, quoted) = if c == '"' || c == '\'' || c == '`' {
            self.i += 1;
            let mut s = String::new();
            loop {
                match self.peek() {
                    None => return Err(self.err_at(pos, "unterminated quoted string")),
                    Some(q) if q == c => {
                        self.i += 1;
                        break;
                    }
                    Some('\\') if c != '`' => {
                        self.i += 1;
                        let e = self
                            .peek()
                            .ok_or_else(|| self.err_at(pos, "unterminated quoted string"))?;
                        self.i += 1;
                        s.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            'u' => {
                                let hex: String = (0..4).filter_map(|k| self.peek_at(k)).collect();
                                let v = u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .and_then(char::from_u32)
                                    .ok_or_else(|| self.err("bad \\u escape"))?;
                                self.i += 4;
                                v
                            }
                            other => other,
                        });
                    }
                    Some(ch) => {
                        s.push(ch);
                        self.i += 1;
                    }
                }
            }
            (s, true)
        } else {
            let mut s = String::new();
            while let Some(ch) = self.peek() {
                if ch.is_whitespace() || DELIMS.contains(&ch) {
                    break;
                }
                if ch == '!' && (s.is_empty() || matches!(self.peek_at(1), Some('=' | '~'))) {
                    break;
                }
                s.push(ch);
                self.i += 1;
            }
            if s.is_empty() {
                return Ok(None);
            }
            (s, false)
        };
        let mut star = false;
        let mut text = text;
        if quoted {
            if self.peek() == Some('*') {
                self.i += 1;
                star = true;
            }
        } else if text.len() > 1 && text.ends_with('*') {
            text.pop();
            star = true;
        }
        Ok(Some(Lit {
            text,
            quoted,
            star,
            pos,
        }))
    }

    fn is_keyword(l: &Lit, kw: &str) -> bool {
        !l.quoted && !l.star && l.text.eq_ignore_ascii_case(kw)
    }

    /// Peeks at the next bare keyword without consuming it.
    fn peek_keyword(&mut self, kw: &str) -> bool {
        let save = self.i;
        let r = matches!(self.lit(), Ok(Some(l)) if Self::is_keyword(&l, kw));
        self.i = save;
        r
    }

    /// Consumes the next bare keyword if it is `kw`.
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let save = self.i;
        match self.lit() {
            Ok(Some(l)) if Self::is_keyword(&l, kw) => true,
            _ => {
                self.i = save;
                false
            }
        }
    }

    /// Consumes `c` if it comes next (after white space).
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        let found = self.peek() == Some(c);
        if found {
            self.i += 1;
        }
        found
    }

    /// Reads a word or quoted string that must be there; `missing` says what was expected.
    fn required_lit(&mut self, missing: &str) -> Result<Lit, ParseError> {
        self.lit()?.ok_or_else(|| self.err(missing))
    }

    /// Reads `(item, item, ...)`: the commas are optional, the list may be empty.
    fn parenthesized<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        self.expect('(')?;
        let mut items = Vec::new();
        while !self.eat(')') {
            items.push(item(self)?);
            self.eat(',');
        }
        Ok(items)
    }

    /// A filter group in parentheses, whose bare words search `field`.
    fn parse_group(&mut self, field: &str) -> Result<Filter, ParseError> {
        self.expect('(')?;
        self.enter()?;
        let f = self.parse_or(field)?;
        self.depth -= 1;
        self.expect(')')?;
        Ok(f)
    }

    /// One more level of nesting, refused beyond [`MAX_DEPTH`].
    fn enter(&mut self) -> Result<(), ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err(format!(
                "the query nests groups or negations deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth += 1;
        Ok(())
    }

    /// The filter a bare word (or phrase) makes on `field`; comparison and regexp
    /// operators written as words are refused.
    fn word(&self, field: &str, lit: Lit) -> Result<Filter, ParseError> {
        if !lit.quoted
            && (lit.text.starts_with('~') || lit.text.starts_with('>') || lit.text.starts_with('<'))
        {
            return Err(self.err_at(lit.pos, format!("unsupported LogsQL filter {:?}", lit.text)));
        }
        Ok(word_filter(field, lit))
    }

    fn parse_or(&mut self, field: &str) -> Result<Filter, ParseError> {
        let mut parts = vec![self.parse_and(field)?];
        while self.eat_keyword("or") {
            parts.push(self.parse_and(field)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            Filter::Or(parts)
        })
    }

    fn parse_and(&mut self, field: &str) -> Result<Filter, ParseError> {
        let mut parts = vec![];
        loop {
            self.skip_ws();
            match self.peek() {
                None | Some(')') | Some('|') => break,
                _ => {}
            }
            if self.peek_keyword("or") {
                break;
            }
            if self.eat_keyword("and") {
                if parts.is_empty() {
                    return Err(self.err("'and' needs a filter on its left"));
                }
                self.skip_ws();
                if matches!(self.peek(), None | Some(')') | Some('|')) {
                    return Err(self.err("'and' needs a filter on its right"));
                }
                continue;
            }
            parts.push(self.parse_unary(field)?);
        }
        if parts.is_empty() {
            return Err(self.err(match self.peek() {
                Some(c) => format!("missing filter before {c:?}"),
                None => "missing filter at the end of the query".to_string(),
            }));
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            Filter::And(parts)
        })
    }

    fn parse_unary(&mut self, field: &str) -> Result<Filter, ParseError> {
        self.skip_ws();
        match self.peek() {
            Some('-') | Some('!')
                if self.peek_at(1).is_some_and(|c| !c.is_whitespace())
                    && self.peek_at(1) != Some('=') =>
            {
                self.i += 1;
                self.enter()?;
                let inner = self.parse_unary(field)?;
                self.depth -= 1;
                Ok(Filter::Not(Box::new(inner)))
            }
            _ if self.eat_keyword("not") => {
                self.enter()?;
                let inner = self.parse_unary(field)?;
                self.depth -= 1;
                Ok(Filter::Not(Box::new(inner)))
            }
            _ => self.parse_primary(field),
        }
    }

    fn parse_primary(&mut self, field: &str) -> Result<Filter, ParseError> {
        self.skip_ws();
        match self.peek() {
            Some('(') => self.parse_group(field),
            Some('{') => self.parse_stream_selector(),
            Some(c @ (')' | ',' | ':' | '}' | '=')) => Err(self.err(format!("unexpected {c:?}"))),
            _ => {
                let lit = self.required_lit("expected a filter")?;
                if self.peek() == Some('(') && !lit.quoted {
                    return Err(self.err_at(
                        lit.pos,
                        format!("unsupported LogsQL filter function {:?}", lit.text),
                    ));
                }
                if self.peek() == Some(':') {
                    self.i += 1;
                    return self.parse_field_value(&lit);
                }
                if !lit.quoted && lit.text == "*" {
                    return Ok(Filter::Any);
                }
                self.word(field, lit)
            }
        }
    }

    fn parse_field_value(&mut self, name: &Lit) -> Result<Filter, ParseError> {
        let field = if name.star {
            format!("{}*", name.text)
        } else {
            name.text.clone()
        };
        if field == "_time" {
            return self.parse_time();
        }
        // No whitespace is allowed between ':' and the value in LogsQL, but be lenient.
        self.skip_ws();
        match self.peek() {
            Some('{') if field == "_stream" => self.parse_stream_selector(),
            Some('(') => self.parse_group(&field),
            Some('=') => {
                self.i += 1;
                if self.peek() == Some('~') {
                    return Err(self.err("regexp filters (:~) are not supported"));
                }
                let lit = self.required_lit("expected a value after ':='")?;
                Ok(if lit.star {
                    Filter::ExactPrefix {
                        field,
                        prefix: lit.text,
                    }
                } else {
                    Filter::Exact {
                        field,
                        value: lit.text,
                    }
                })
            }
            Some('!') | Some('-') => {
                self.i += 1;
                let inner = self.parse_field_value(name)?;
                Ok(Filter::Not(Box::new(inner)))
            }
            Some(c @ ('>' | '<' | '~')) => {
                Err(self.err(format!("unsupported LogsQL filter operator {c:?}")))
            }
            _ => {
                let lit = self
                    .lit()?
                    .ok_or_else(|| self.err(format!("expected a value for field {field:?}")))?;
                if !lit.quoted && lit.text == "*" {
                    return Ok(Filter::NonEmpty { field });
                }
                self.word(&field, lit)
            }
        }
    }

    fn parse_time(&mut self) -> Result<Filter, ParseError> {
        let start_pos = self.i;
        match self.peek() {
            Some(open @ ('[' | '(')) => {
                let close_at = (self.i..self.chars.len())
                    .find(|&k| matches!(self.chars[k].1, ']' | ')'))
                    .ok_or_else(|| self.err("unterminated _time range; use _time:[start, end)"))?;
                let close = self.chars[close_at].1;
                let inner: String = self.chars[self.i + 1..close_at]
                    .iter()
                    .map(|c| c.1)
                    .collect();
                let (a, b) = inner.split_once(',').ok_or_else(|| {
                    self.err("a _time range needs two bounds: _time:[start, end)")
                })?;
                let bound = |text: &str, pos: usize| {
                    parse_time_arg(text, self.now).ok_or_else(|| {
                        self.err_at(pos, format!("cannot parse time {:?}", text.trim()))
                    })
                };
                let start = bound(a, self.i + 1)?;
                let end = bound(b, self.i + 2 + a.chars().count())?;
                self.i = close_at + 1;
                let start = if open == '(' {
                    start.saturating_add(1)
                } else {
                    start
                };
                let end = if close == ']' {
                    end.saturating_add(1)
                } else {
                    end
                };
                Ok(Filter::Time { start, end })
            }
            _ => {
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    if c.is_whitespace() || c == ')' || c == '|' {
                        break;
                    }
                    s.push(c);
                    self.i += 1;
                }
                if s.is_empty() {
                    return Err(
                        self.err_at(start_pos, "expected a duration or a range after _time:")
                    );
                }
                if let Some(d) = parse_duration(&s) {
                    return Ok(Filter::Time {
                        start: self.now - d.abs(),
                        end: self.now.saturating_add(1),
                    });
                }
                if let Some(t) = parse_rfc3339(&s) {
                    // A bare timestamp selects the period it names: a day, a minute or a second.
                    let digits = s.bytes().filter(u8::is_ascii_digit).count();
                    let span = match digits {
                        8 => 86_400_000_000_000,
                        12 => 60_000_000_000,
                        14 => 1_000_000_000,
                        _ => 1,
                    };
                    return Ok(Filter::Time {
                        start: t,
                        end: t + span,
                    });
                }
                Err(self.err_at(
                    start_pos,
                    format!("cannot parse _time filter {s:?}; use _time:5m or _time:[start, end)"),
                ))
            }
        }
    }

    fn parse_stream_selector(&mut self) -> Result<Filter, ParseError> {
        self.expect('{')?;
        let mut matchers = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.i += 1;
                break;
            }
            let name = self.required_lit("expected a stream field name")?;
            self.skip_ws();
            let op = match (self.peek(), self.peek_at(1)) {
                (Some('='), Some('~')) | (Some('!'), Some('~')) => {
                    return Err(self.err("regexp stream matchers (=~, !~) are not supported"))
                }
                (Some('='), _) => {
                    self.i += 1;
                    StreamOp::Eq(self.required_lit("expected a value")?.text)
                }
                (Some('!'), Some('=')) => {
                    self.i += 2;
                    StreamOp::Ne(self.required_lit("expected a value")?.text)
                }
                _ => {
                    let save = self.i;
                    let kw = self.lit()?;
                    let negate = match kw {
                        Some(ref k) if Parser::is_keyword(k, "in") => false,
                        Some(ref k) if Parser::is_keyword(k, "not_in") => true,
                        _ => {
                            self.i = save;
                            return Err(
                                self.err("expected =, != or in(...) in the stream selector")
                            );
                        }
                    };
                    let vs =
                        self.parenthesized(|p| Ok(p.required_lit("expected a value")?.text))?;
                    if negate {
                        StreamOp::NotIn(vs)
                    } else {
                        StreamOp::In(vs)
                    }
                }
            };
            matchers.push((name.text, op));
            self.skip_ws();
            match self.peek() {
                Some(',') => self.i += 1,
                Some('}') => {}
                _ => return Err(self.err("expected ',' or '}' in the stream selector")),
            }
        }
        Ok(Filter::Stream(matchers))
    }

    fn field_name(&mut self) -> Result<String, ParseError> {
        let l = self.required_lit("expected a field name")?;
        Ok(if l.star {
            format!("{}*", l.text)
        } else {
            l.text
        })
    }

    fn field_list(&mut self) -> Result<Vec<String>, ParseError> {
        self.skip_ws();
        let paren = self.peek() == Some('(');
        if paren {
            self.i += 1;
        }
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if paren && self.peek() == Some(')') {
                self.i += 1;
                break;
            }
            out.push(self.field_name()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.i += 1,
                _ if paren => {
                    self.expect(')')?;
                    break;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn number(&mut self) -> Result<usize, ParseError> {
        let l = self.required_lit("expected a number")?;
        l.text.parse().map_err(|_| {
            self.err_at(
                l.pos,
                format!("expected a non-negative integer, found {:?}", l.text),
            )
        })
    }

    fn parse_pipe(&mut self) -> Result<Pipe, ParseError> {
        self.skip_ws();
        let pos = self.i;
        let name = self.required_lit("expected a pipe name after '|'")?;
        match name.text.to_ascii_lowercase().as_str() {
            "sort" | "order" => {
                self.eat_keyword("by");
                let mut keys = self.parenthesized(|p| {
                    let f = p.field_name()?;
                    let desc = p.eat_keyword("desc");
                    if !desc {
                        p.eat_keyword("asc");
                    }
                    Ok((f, desc))
                })?;
                if keys.is_empty() {
                    return Err(self.err_at(pos, "sort needs at least one field"));
                }
                if self.eat_keyword("desc") {
                    for k in &mut keys {
                        k.1 = !k.1;
                    }
                }
                let limit = if self.eat_keyword("limit") {
                    Some(self.number()?)
                } else {
                    None
                };
                Ok(Pipe::Sort { keys, limit })
            }
            "limit" | "head" => {
                self.skip_ws();
                if self.at_end() || self.peek() == Some('|') {
                    return Ok(Pipe::Limit(10));
                }
                Ok(Pipe::Limit(self.number()?))
            }
            "fields" | "keep" => Ok(Pipe::Fields(self.field_list()?)),
            "filter" | "where" => Ok(Pipe::Filter(self.parse_or("_msg")?)),
            "stats" => self.parse_stats(),
            other => Err(self.err_at(pos, format!("unsupported pipe {other:?}"))),
        }
    }

    fn parse_stats(&mut self) -> Result<Pipe, ParseError> {
        let mut by = Vec::new();
        if self.eat_keyword("by") {
            by = self.field_list()?;
        }
        let mut funcs = Vec::new();
        loop {
            self.skip_ws();
            let pos = self.i;
            let f = self.required_lit("expected a stats function such as count()")?;
            let kind = f.text.to_ascii_lowercase();
            if !["count", "count_uniq", "sum", "min", "max", "avg"].contains(&kind.as_str()) {
                return Err(self.err_at(pos, format!("unsupported stats function {:?}", f.text)));
            }
            let fields = self.parenthesized(Self::field_name)?;
            if kind != "count" && fields.is_empty() {
                return Err(self.err_at(pos, format!("{kind}() needs a field")));
            }
            let args = if fields.is_empty() {
                "*".to_string()
            } else {
                fields.join(", ")
            };
            let mut name = format!("{kind}({args})");
            if self.eat_keyword("as") {
                name = self.field_name()?;
            } else {
                // `count() name` is allowed too, unless the next word starts a clause.
                let save = self.i;
                if let Ok(Some(l)) = self.lit() {
                    if Self::is_keyword(&l, "by") {
                        self.i = save;
                    } else {
                        name = l.text;
                    }
                } else {
                    self.i = save;
                }
            }
            funcs.push(StatsFunc { kind, fields, name });
            if !self.eat(',') {
                break;
            }
        }
        if self.peek_keyword("by") {
            if !by.is_empty() {
                return Err(self.err("stats has two 'by' clauses"));
            }
            self.lit()?;
            by = self.field_list()?;
        }
        Ok(Pipe::Stats { by, funcs })
    }
}

fn word_filter(field: &str, lit: Lit) -> Filter {
    let field = field.to_string();
    if lit.star {
        Filter::Prefix {
            field,
            prefix: lit.text,
        }
    } else {
        Filter::Phrase {
            field,
            phrase: lit.text,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        for q in [
            "(".repeat(100_000),
            format!("{}a{}", "(".repeat(5_000), ")".repeat(5_000)),
            "!".repeat(100_000) + "a",
            "not ".repeat(50_000) + "a",
        ] {
            let e = parse(&q, 0).unwrap_err();
            assert!(e.reason.contains("deeper than 100 levels"), "{}", e.reason);
        }
        let ok = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok, 0).is_ok());
    }
    use super::*;

    fn q(s: &str) -> Query {
        parse(s, 1_000_000_000_000).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn ph(f: &str, p: &str) -> Filter {
        Filter::Phrase {
            field: f.into(),
            phrase: p.into(),
        }
    }

    #[test]
    fn filters() {
        assert_eq!(q("error").filter, ph("_msg", "error"));
        assert_eq!(q("\"cannot open\"").filter, ph("_msg", "cannot open"));
        assert_eq!(
            q("error -level:debug").filter,
            Filter::And(vec![
                ph("_msg", "error"),
                Filter::Not(Box::new(ph("level", "debug")))
            ])
        );
        assert_eq!(
            q("a or b and c").filter,
            Filter::Or(vec![
                ph("_msg", "a"),
                Filter::And(vec![ph("_msg", "b"), ph("_msg", "c")])
            ])
        );
        assert_eq!(
            q("NOT (a OR b)").filter,
            Filter::Not(Box::new(Filter::Or(vec![ph("_msg", "a"), ph("_msg", "b")])))
        );
        assert_eq!(
            q("f:=x").filter,
            Filter::Exact {
                field: "f".into(),
                value: "x".into()
            }
        );
        assert_eq!(
            q("f:=\"x y\"*").filter,
            Filter::ExactPrefix {
                field: "f".into(),
                prefix: "x y".into()
            }
        );
        assert_eq!(
            q("foo*").filter,
            Filter::Prefix {
                field: "_msg".into(),
                prefix: "foo".into()
            }
        );
        assert_eq!(q("f:*").filter, Filter::NonEmpty { field: "f".into() });
        assert_eq!(q("*").filter, Filter::Any);
        assert_eq!(
            q("_time:5m").filter,
            Filter::Time {
                start: 1_000_000_000_000 - 300_000_000_000,
                end: 1_000_000_000_001
            }
        );
        assert_eq!(
            q("_time:[1970-01-01T00:00:01Z, 1970-01-01T00:00:02Z)").filter,
            Filter::Time {
                start: 1_000_000_000,
                end: 2_000_000_000
            }
        );
        assert_eq!(
            q(r#"_stream:{app="a", host!="b"}"#).filter,
            Filter::Stream(vec![
                ("app".into(), StreamOp::Eq("a".into())),
                ("host".into(), StreamOp::Ne("b".into()))
            ])
        );
        assert_eq!(
            q(r#"{app in("a","b")}"#).filter,
            Filter::Stream(vec![(
                "app".into(),
                StreamOp::In(vec!["a".into(), "b".into()])
            )])
        );
        assert_eq!(
            q("f:(a or b)").filter,
            Filter::Or(vec![ph("f", "a"), ph("f", "b")])
        );
        assert_eq!(q("\"and\"").filter, ph("_msg", "and"));
    }

    #[test]
    fn pipes() {
        let p = q("* | sort by (_time desc, a) | limit 5 | fields _time, _msg | stats by (a) count() as n, count(b)").pipes;
        assert_eq!(
            p[0],
            Pipe::Sort {
                keys: vec![("_time".into(), true), ("a".into(), false)],
                limit: None
            }
        );
        assert_eq!(p[1], Pipe::Limit(5));
        assert_eq!(p[2], Pipe::Fields(vec!["_time".into(), "_msg".into()]));
        assert_eq!(
            p[3],
            Pipe::Stats {
                by: vec!["a".into()],
                funcs: vec![
                    StatsFunc {
                        kind: "count".into(),
                        fields: vec![],
                        name: "n".into()
                    },
                    StatsFunc {
                        kind: "count".into(),
                        fields: vec!["b".into()],
                        name: "count(b)".into()
                    },
                ]
            }
        );
        assert_eq!(
            q("x | stats count() by (f)").pipes[0],
            Pipe::Stats {
                by: vec!["f".into()],
                funcs: vec![StatsFunc {
                    kind: "count".into(),
                    fields: vec![],
                    name: "count(*)".into()
                }]
            }
        );
    }

    #[test]
    fn errors_carry_positions() {
        let e = parse("error | sortt by (x)", 0).unwrap_err();
        assert_eq!(e.position, 8);
        assert!(e.reason.contains("unsupported pipe"), "{e}");
        let e = parse("(a or b", 0).unwrap_err();
        assert_eq!(e.position, 7);
        let e = parse("foo \"bar", 0).unwrap_err();
        assert_eq!(e.position, 4);
        let e = parse("_time:[yesterday, now)", 0).unwrap_err();
        assert_eq!(e.position, 7);
        assert!(parse("", 0).is_err());
        assert!(parse("a | limit x", 0).is_err());
        assert!(parse("a)", 0).is_err());
        assert!(parse("f:~\"x\"", 0).is_err());
        assert!(parse("a and", 0).is_err());
        assert!(e.to_string().contains("position 7"));
    }

    #[test]
    fn matching() {
        assert!(phrase_match("cannot open file", "open"));
        assert!(!phrase_match("reopened", "open"));
        assert!(phrase_match("a-b-c", "b-c"));
        assert!(phrase_match("x cannot open", "cannot open"));
        assert!(!phrase_match("x cannot opener", "cannot open"));
        assert!(prefix_match("reopened opener", "open"));
        assert!(!prefix_match("reopened", "open"));
        assert!(phrase_match("", ""));
        assert!(!phrase_match("x", ""));
    }
}
