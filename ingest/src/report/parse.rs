//! The single pass over a report body: serde visitors that check each value as the
//! deserializer reaches it and keep only what the service needs.
//!
//! Every value, whatever its type, is consumed by a visitor that accepts any JSON (a
//! wrong type is a reported problem, not a parse error), so the body is always read to
//! its end and `Invalid JSON payload` means exactly what it meant with `serde_json::Value`:
//! a syntax error, invalid escapes, a number out of `f64` range, or nesting deeper than
//! serde_json's limit. Where a key repeats, its last value counts, as in a `Value`.
//!
//! Memory: problems are kept up to [`MAX_DETAILS`] per list and counted beyond; NUL
//! findings up to [`NUL_BUDGET`]; nothing else grows with the body except the two raw
//! slices (`environment`, `metadata`) the header keeps.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::rules::{self, FRAMEWORKS, STATUSES};
use super::{Detail, MAX_DETAILS, Rejection, Report};

/// serde_json's nesting limit: a container may open while this counter, decremented
/// per open container, stays above zero (so at most 127 levels). Applied here as well
/// to `environment` and `metadata`, which are first taken raw (serde_json does not
/// count the levels of a raw value).
const DEPTH: u32 = 128;

/// NUL findings kept. Only the first [`MAX_DETAILS`] are reported; this bounds memory
/// while keeping the order exact for any realistic body (findings are reported in key
/// order, which is not the order they are found in).
const NUL_BUDGET: usize = 10_000;

/// Keys of `environment` whose problems are deduplicated (a repeated key replaces the
/// earlier value); beyond this many, further problems are only counted.
const ENV_DEDUP_LIMIT: usize = 10_000;

const NUL_MESSAGE: &str = "Must not contain the NUL character (\\u0000)";
const DATE_TIME_MESSAGE: &str = "Must be an ISO-8601 date-time such as 2026-11-28T17:43:00Z";

pub(super) fn parse(text: &str, max_tests: usize) -> Result<Report<'_>, Rejection> {
    let mut ctx = Ctx {
        nul_budget: NUL_BUDGET,
        max_tests,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let root = de
        .deserialize_any(RootVisitor { ctx: &mut ctx })
        .map_err(|_| Rejection::InvalidJson)?;
    de.end().map_err(|_| Rejection::InvalidJson)?;
    root.finish()
}

/// State shared by every visitor of one parse.
struct Ctx {
    nul_budget: usize,
    max_tests: usize,
}

impl Ctx {
    /// Whether a NUL finding may still be recorded.
    fn take_nul(&mut self) -> bool {
        if self.nul_budget == 0 {
            return false;
        }
        self.nul_budget -= 1;
        true
    }
}

/// One level deeper, refused past serde_json's limit.
fn deeper<E: de::Error>(remaining: u32) -> Result<u32, E> {
    match remaining.checked_sub(1) {
        Some(inner) if inner > 0 => Ok(inner),
        _ => Err(E::custom("recursion limit exceeded")),
    }
}

/// JSON types, named as in the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Boolean => "boolean",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }
}

/// The previous validator's wording, kept byte for byte (including its stray `)`).
fn type_message(expected: &str, received: Kind) -> String {
    format!("Expected {expected}), received {}", received.name())
}

/// Problems of one part of the report, in order: the first `room` (at most
/// [`MAX_DETAILS`]) kept, all counted.
#[derive(Debug)]
struct Errors {
    shown: Vec<Detail>,
    total: usize,
    /// How many can still be listed where these end up: past it a problem is only
    /// counted, without formatting its message (13 million wrong items stay cheap).
    room: usize,
}

impl Default for Errors {
    fn default() -> Self {
        Self::with_room(MAX_DETAILS)
    }
}

impl Errors {
    fn with_room(room: usize) -> Self {
        Self {
            shown: Vec::new(),
            total: 0,
            room,
        }
    }

    fn push(&mut self, detail: impl FnOnce() -> Detail) {
        if self.shown.len() < self.room {
            self.shown.push(detail());
        }
        self.total += 1;
    }

    fn extend(&mut self, other: Errors) {
        let room = self.room.saturating_sub(self.shown.len());
        self.shown.extend(other.shown.into_iter().take(room));
        self.total += other.total;
    }
}

fn detail(path: impl Into<String>, message: impl Into<String>) -> Detail {
    Detail {
        path: path.into(),
        message: message.into(),
    }
}

/// Where NUL characters were found, pruned to the parts that hold one.
#[derive(Debug)]
enum Nul<'a> {
    /// This string holds one.
    Here,
    /// Array items, by index.
    Items(Vec<(usize, Nul<'a>)>),
    /// Object entries in key order: whether the key holds one, and the value's findings.
    Entries(BTreeMap<Cow<'a, str>, (bool, Option<Nul<'a>>)>),
}

/// Records one object entry's findings; a repeated key replaces the earlier entry.
fn record_entry<'a>(
    entries: &mut BTreeMap<Cow<'a, str>, (bool, Option<Nul<'a>>)>,
    ctx: &mut Ctx,
    key: Cow<'a, str>,
    value: Option<Nul<'a>>,
) {
    let key_nul = key.contains('\0') && ctx.take_nul();
    if key_nul || value.is_some() {
        entries.insert(key, (key_nul, value));
    } else if !entries.is_empty() {
        entries.remove(&key);
    }
}

fn entries_node<'a>(entries: BTreeMap<Cow<'a, str>, (bool, Option<Nul<'a>>)>) -> Option<Nul<'a>> {
    (!entries.is_empty()).then_some(Nul::Entries(entries))
}

/// The NUL details in the order the previous validator listed them (a depth-first walk
/// with object keys sorted), at most [`MAX_DETAILS`].
fn nul_details(node: &Nul<'_>, path: &mut Vec<String>, out: &mut Vec<Detail>) {
    match node {
        Nul::Here => {
            if out.len() < MAX_DETAILS {
                out.push(detail(path.join("."), NUL_MESSAGE));
            }
        }
        Nul::Items(items) => {
            for (index, item) in items {
                if out.len() >= MAX_DETAILS {
                    return;
                }
                path.push(index.to_string());
                nul_details(item, path, out);
                path.pop();
            }
        }
        Nul::Entries(entries) => {
            for (key, (key_nul, value)) in entries {
                if out.len() >= MAX_DETAILS {
                    return;
                }
                path.push(key.to_string());
                if *key_nul {
                    out.push(detail(path.join("."), NUL_MESSAGE));
                }
                if let Some(value) = value {
                    nul_details(value, path, out);
                }
                path.pop();
            }
        }
    }
}

/// A number as the rules see it.
#[derive(Debug, Clone, Copy)]
struct Num {
    /// JSON Schema's `integer`: no fractional part (`1.0` and `1e2` are integers).
    integer: bool,
    positive: bool,
}

/// What a value turned out to be.
enum Seen<T> {
    Str(T),
    Number(Num),
    Other(Kind),
}

impl<T> Seen<T> {
    fn kind(&self) -> Kind {
        match self {
            Seen::Str(_) => Kind::String,
            Seen::Number(_) => Kind::Number,
            Seen::Other(kind) => *kind,
        }
    }
}

/// What to make of a string value: keep it (borrowed where the body allows) or only
/// look at it.
trait OnStr<'a> {
    type Out;
    fn borrowed(self, text: &'a str) -> Self::Out;
    fn transient(self, text: &str) -> Self::Out;
}

/// Keeps the string.
struct Keep;

impl<'a> OnStr<'a> for Keep {
    type Out = Cow<'a, str>;
    fn borrowed(self, text: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(text)
    }
    fn transient(self, text: &str) -> Cow<'a, str> {
        Cow::Owned(text.to_owned())
    }
}

/// Applies a check to the string without keeping it.
struct Check<F>(F);

impl<'a, R, F: FnOnce(&str) -> R> OnStr<'a> for Check<F> {
    type Out = R;
    fn borrowed(self, text: &'a str) -> R {
        (self.0)(text)
    }
    fn transient(self, text: &str) -> R {
        (self.0)(text)
    }
}

fn ignore() -> Check<fn(&str)> {
    Check(|_| ())
}

/// Accepts any value: strings go to `on_str`, containers are walked for NULs only.
struct AnySeed<'c, S> {
    ctx: &'c mut Ctx,
    remaining: u32,
    on_str: S,
}

impl<'de, S: OnStr<'de>> DeserializeSeed<'de> for AnySeed<'_, S> {
    type Value = (Seen<S::Out>, Option<Nul<'de>>);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, S: OnStr<'de>> Visitor<'de> for AnySeed<'_, S> {
    type Value = (Seen<S::Out>, Option<Nul<'de>>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        let nul = (text.contains('\0') && self.ctx.take_nul()).then_some(Nul::Here);
        Ok((Seen::Str(self.on_str.borrowed(text)), nul))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let nul = (text.contains('\0') && self.ctx.take_nul()).then_some(Nul::Here);
        Ok((Seen::Str(self.on_str.transient(text)), nul))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok((
            Seen::Number(Num {
                integer: true,
                positive: n > 0,
            }),
            None,
        ))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok((
            Seen::Number(Num {
                integer: true,
                positive: n > 0,
            }),
            None,
        ))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok((
            Seen::Number(Num {
                integer: n.fract() == 0.0,
                positive: n > 0.0,
            }),
            None,
        ))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok((Seen::Other(Kind::Boolean), None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((Seen::Other(Kind::Null), None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let nul = walk_seq(seq, self.ctx, self.remaining)?;
        Ok((Seen::Other(Kind::Array), nul))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let nul = walk_map(map, self.ctx, self.remaining)?;
        Ok((Seen::Other(Kind::Object), nul))
    }
}

/// Walks an array whose content has no rules, for NULs and nesting.
fn walk_seq<'de, A: SeqAccess<'de>>(
    mut seq: A,
    ctx: &mut Ctx,
    remaining: u32,
) -> Result<Option<Nul<'de>>, A::Error> {
    let inner = deeper::<A::Error>(remaining)?;
    let mut items = Vec::new();
    let mut index = 0;
    while let Some((_, nul)) = seq.next_element_seed(AnySeed {
        ctx: &mut *ctx,
        remaining: inner,
        on_str: ignore(),
    })? {
        if let Some(nul) = nul {
            items.push((index, nul));
        }
        index += 1;
    }
    Ok((!items.is_empty()).then_some(Nul::Items(items)))
}

/// Walks an object whose content has no rules, for NULs and nesting.
fn walk_map<'de, A: MapAccess<'de>>(
    mut map: A,
    ctx: &mut Ctx,
    remaining: u32,
) -> Result<Option<Nul<'de>>, A::Error> {
    let inner = deeper::<A::Error>(remaining)?;
    let mut entries = BTreeMap::new();
    while let Some(key) = map.next_key_seed(KeySeed)? {
        let (_, nul) = map.next_value_seed(AnySeed {
            ctx: &mut *ctx,
            remaining: inner,
            on_str: ignore(),
        })?;
        record_entry(&mut entries, ctx, key, nul);
    }
    Ok(entries_node(entries))
}

/// An object key, borrowed unless it had escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(text))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text.to_owned()))
    }
}

/// Checks a string against the rules of its field, pushing problems for `path`.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Character count within `min..=max`.
    Length {
        min: usize,
        max: usize,
    },
    CommitSha,
    Uuid,
    /// `format: date-time` and `pattern: T`, reported separately as before.
    DateTime,
}

impl Rule {
    fn check(self, text: &str, errors: &mut Errors, path: &dyn Fn() -> String) {
        match self {
            Rule::Length { min, max } => {
                if min > 0 && text.chars().take(min).count() < min {
                    errors.push(|| {
                        detail(path(), format!("Must contain at least {min} character(s)"))
                    });
                }
                if rules::chars_over(text, max) {
                    errors.push(|| {
                        detail(path(), format!("Must contain at most {max} character(s)"))
                    });
                }
            }
            Rule::CommitSha => {
                if !rules::is_commit_sha(text) {
                    errors.push(|| detail(path(), "Must be exactly 40 hexadecimal characters"));
                }
            }
            Rule::Uuid => {
                if !rules::is_uuid(text) {
                    errors.push(|| detail(path(), "Must be a UUID"));
                }
            }
            Rule::DateTime => {
                if !rules::is_date_time(text) {
                    errors.push(|| detail(path(), DATE_TIME_MESSAGE));
                }
                if !text.contains('T') {
                    errors.push(|| detail(path(), DATE_TIME_MESSAGE));
                }
            }
        }
    }
}

fn enum_message(options: &[&str]) -> String {
    format!(
        "Invalid value; expected one of [\"{}\"]",
        options.join("\",\"")
    )
}

/// The problems of one string-typed value.
fn check_string<T>(
    seen: &Seen<T>,
    text: Option<&str>,
    rule: Rule,
    path: &dyn Fn() -> String,
) -> Errors {
    let mut errors = Errors::default();
    match (seen, text) {
        (Seen::Str(_), Some(text)) => rule.check(text, &mut errors, path),
        (other, _) => {
            let kind = other.kind();
            errors.push(|| detail(path(), type_message("String", kind)));
        }
    }
    errors
}

/// A root field: its problems and what it holds.
struct Slot<T> {
    errors: Errors,
    value: T,
}

/// The root object, field by field (`None`: absent).
#[derive(Default)]
struct Root<'a> {
    /// Set when the body is not an object.
    not_object: Option<Kind>,
    repo_id: Option<Slot<Option<Cow<'a, str>>>>,
    commit_sha: Option<Slot<Option<Cow<'a, str>>>>,
    run_id: Option<Slot<Option<Cow<'a, str>>>>,
    framework: Option<Slot<Option<&'static str>>>,
    branch: Option<Slot<Option<Cow<'a, str>>>>,
    pull_request: Option<Slot<Option<Cow<'a, str>>>>,
    environment: Option<Slot<Option<&'a RawValue>>>,
    metadata: Option<Slot<Option<&'a RawValue>>>,
    idempotency_key: Option<Slot<Option<Cow<'a, str>>>>,
    tests: Option<Slot<usize>>,
    nul: Option<Nul<'a>>,
}

impl<'a> Root<'a> {
    fn finish(self) -> Result<Report<'a>, Rejection> {
        let mut details = Vec::new();
        if let Some(nul) = &self.nul {
            nul_details(nul, &mut Vec::new(), &mut details);
        }
        let mut schema = Errors::default();
        if let Some(kind) = self.not_object {
            schema.push(|| detail("", type_message("Object", kind)));
        } else {
            for (name, present) in [
                ("repo_id", self.repo_id.is_some()),
                ("commit_sha", self.commit_sha.is_some()),
                ("run_id", self.run_id.is_some()),
                ("framework", self.framework.is_some()),
                ("tests", self.tests.is_some()),
            ] {
                if !present {
                    schema.push(|| detail(name, "Required"));
                }
            }
        }
        let Root {
            repo_id,
            commit_sha,
            run_id,
            framework,
            branch,
            pull_request,
            environment,
            metadata,
            idempotency_key,
            tests,
            ..
        } = self;
        // Fields in name order, as the schema's `properties` were checked.
        let (branch, branch_errors) = split(branch);
        let (commit_sha, commit_sha_errors) = split(commit_sha);
        let (environment, environment_errors) = split(environment);
        let (framework, framework_errors) = split(framework);
        let (idempotency_key, idempotency_key_errors) = split(idempotency_key);
        let (metadata, metadata_errors) = split(metadata);
        let (pull_request, pull_request_errors) = split(pull_request);
        let (repo_id, repo_id_errors) = split(repo_id);
        let (run_id, run_id_errors) = split(run_id);
        let (test_count, tests_errors) = split(tests);
        for errors in [
            branch_errors,
            commit_sha_errors,
            environment_errors,
            framework_errors,
            idempotency_key_errors,
            metadata_errors,
            pull_request_errors,
            repo_id_errors,
            run_id_errors,
            tests_errors,
        ] {
            schema.extend(errors);
        }

        let listed = MAX_DETAILS
            .saturating_sub(details.len())
            .min(schema.shown.len());
        details.extend(schema.shown.into_iter().take(listed));
        let extra = schema.total - listed;
        if extra > 0 {
            details.push(detail("", format!("{extra} more problems not listed")));
        }
        if !details.is_empty() {
            return Err(Rejection::Invalid(details));
        }
        // No problem: every required field is present and well-formed.
        let (
            Some(Some(repo_id)),
            Some(Some(commit_sha)),
            Some(Some(run_id)),
            Some(Some(framework)),
            Some(test_count),
        ) = (repo_id, commit_sha, run_id, framework, test_count)
        else {
            return Err(Rejection::Invalid(vec![detail("", "Invalid report")]));
        };
        let repo_id = Uuid::parse_str(&repo_id)
            .map_err(|_| Rejection::Invalid(vec![detail("repo_id", "Must be a UUID")]))?;
        Ok(Report {
            repo_id,
            commit_sha,
            run_id,
            framework,
            branch: branch.flatten(),
            pull_request: pull_request.flatten(),
            environment: environment.flatten(),
            metadata: metadata.flatten(),
            idempotency_key: idempotency_key.flatten(),
            test_count,
        })
    }
}

fn split<T>(slot: Option<Slot<T>>) -> (Option<T>, Errors) {
    match slot {
        Some(Slot { errors, value }) => (Some(value), errors),
        None => (None, Errors::default()),
    }
}

struct RootVisitor<'c> {
    ctx: &'c mut Ctx,
}

impl<'de> RootVisitor<'_> {
    fn not_object(kind: Kind, nul: Option<Nul<'de>>) -> Root<'de> {
        Root {
            not_object: Some(kind),
            nul,
            ..Root::default()
        }
    }
}

impl<'de> Visitor<'de> for RootVisitor<'_> {
    type Value = Root<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a report object")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let nul = (text.contains('\0') && self.ctx.take_nul()).then_some(Nul::Here);
        Ok(Self::not_object(Kind::String, nul))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Number, None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Number, None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Number, None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Boolean, None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Null, None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let nul = walk_seq(seq, self.ctx, DEPTH)?;
        Ok(Self::not_object(Kind::Array, nul))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let inner = deeper::<A::Error>(DEPTH)?;
        let mut root = Root::default();
        let mut entries = BTreeMap::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let nul = match key.as_ref() {
                "repo_id" => text_field(
                    &mut map,
                    ctx,
                    inner,
                    "repo_id",
                    Rule::Uuid,
                    &mut root.repo_id,
                )?,
                "commit_sha" => text_field(
                    &mut map,
                    ctx,
                    inner,
                    "commit_sha",
                    Rule::CommitSha,
                    &mut root.commit_sha,
                )?,
                "run_id" => text_field(
                    &mut map,
                    ctx,
                    inner,
                    "run_id",
                    Rule::Length {
                        min: 1,
                        max: rules::RUN_ID_MAX,
                    },
                    &mut root.run_id,
                )?,
                "branch" | "pull_request" | "idempotency_key" => {
                    let (name, slot) = match key.as_ref() {
                        "branch" => ("branch", &mut root.branch),
                        "pull_request" => ("pull_request", &mut root.pull_request),
                        _ => ("idempotency_key", &mut root.idempotency_key),
                    };
                    let rule = Rule::Length {
                        min: 0,
                        max: rules::OPTIONAL_TEXT_MAX,
                    };
                    text_field(&mut map, ctx, inner, name, rule, slot)?
                }
                "framework" => {
                    let (seen, nul) = map.next_value_seed(AnySeed {
                        ctx: &mut *ctx,
                        remaining: inner,
                        on_str: Check(|text: &str| FRAMEWORKS.iter().copied().find(|f| *f == text)),
                    })?;
                    let value = match seen {
                        Seen::Str(found) => found,
                        _ => None,
                    };
                    let mut errors = Errors::default();
                    if value.is_none() {
                        errors.push(|| detail("framework", enum_message(&FRAMEWORKS)));
                    }
                    root.framework = Some(Slot { errors, value });
                    nul
                }
                "environment" => {
                    let raw: &'de RawValue = map.next_value()?;
                    let (errors, nul) = check_environment(raw, ctx, inner)
                        .map_err(<A::Error as de::Error>::custom)?;
                    root.environment = Some(Slot {
                        errors,
                        value: Some(raw),
                    });
                    nul
                }
                "metadata" => {
                    let raw: &'de RawValue = map.next_value()?;
                    let mut raw_de = serde_json::Deserializer::from_str(raw.get());
                    let (seen, nul) = raw_de
                        .deserialize_any(AnySeed {
                            ctx: &mut *ctx,
                            remaining: inner,
                            on_str: ignore(),
                        })
                        .map_err(<A::Error as de::Error>::custom)?;
                    let mut errors = Errors::default();
                    let kind = seen.kind();
                    if kind != Kind::Object {
                        errors.push(|| detail("metadata", type_message("Object", kind)));
                    }
                    root.metadata = Some(Slot {
                        errors,
                        value: Some(raw),
                    });
                    nul
                }
                "tests" => {
                    let (slot, nul) = map.next_value_seed(TestsSeed {
                        ctx: &mut *ctx,
                        remaining: inner,
                    })?;
                    root.tests = Some(slot);
                    nul
                }
                _ => {
                    let (_, nul) = map.next_value_seed(AnySeed {
                        ctx: &mut *ctx,
                        remaining: inner,
                        on_str: ignore(),
                    })?;
                    nul
                }
            };
            record_entry(&mut entries, ctx, key, nul);
        }
        root.nul = entries_node(entries);
        Ok(root)
    }
}

/// A root string field: checks it with `rule` and keeps it.
fn text_field<'de, A: MapAccess<'de>>(
    map: &mut A,
    ctx: &mut Ctx,
    remaining: u32,
    name: &'static str,
    rule: Rule,
    slot: &mut Option<Slot<Option<Cow<'de, str>>>>,
) -> Result<Option<Nul<'de>>, A::Error> {
    let (seen, nul) = map.next_value_seed(AnySeed {
        ctx,
        remaining,
        on_str: Keep,
    })?;
    let text = match &seen {
        Seen::Str(text) => Some(text.as_ref()),
        _ => None,
    };
    let errors = check_string(&seen, text, rule, &|| name.to_owned());
    let value = match seen {
        Seen::Str(text) => Some(text),
        _ => None,
    };
    *slot = Some(Slot { errors, value });
    Ok(nul)
}

/// `environment`: an object of strings. Walked from its raw slice; problems in key order.
fn check_environment<'de>(
    raw: &'de RawValue,
    ctx: &mut Ctx,
    remaining: u32,
) -> Result<(Errors, Option<Nul<'de>>), serde_json::Error> {
    let mut raw_de = serde_json::Deserializer::from_str(raw.get());
    raw_de.deserialize_any(EnvironmentVisitor { ctx, remaining })
}

struct EnvironmentVisitor<'c> {
    ctx: &'c mut Ctx,
    remaining: u32,
}

impl EnvironmentVisitor<'_> {
    fn not_object<'de>(kind: Kind, nul: Option<Nul<'de>>) -> (Errors, Option<Nul<'de>>) {
        let mut errors = Errors::default();
        errors.push(|| detail("environment", type_message("Object", kind)));
        (errors, nul)
    }
}

impl<'de> Visitor<'de> for EnvironmentVisitor<'_> {
    type Value = (Errors, Option<Nul<'de>>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an environment object")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let nul = (text.contains('\0') && self.ctx.take_nul()).then_some(Nul::Here);
        Ok(Self::not_object(Kind::String, nul))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Number, None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Number, None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Number, None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Boolean, None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Self::not_object(Kind::Null, None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let nul = walk_seq(seq, self.ctx, self.remaining)?;
        Ok(Self::not_object(Kind::Array, nul))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let inner = deeper::<A::Error>(self.remaining)?;
        let mut entries = BTreeMap::new();
        // The first problems in key order, and the keys of all (to count a repeated key
        // once, as its last value decides).
        let mut shown: BTreeMap<Cow<'de, str>, Kind> = BTreeMap::new();
        let hasher = RandomState::new();
        let mut bad: HashSet<u64> = HashSet::new();
        let mut untracked = 0usize;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let (seen, nul) = map.next_value_seed(AnySeed {
                ctx: &mut *ctx,
                remaining: inner,
                on_str: ignore(),
            })?;
            let hash = hasher.hash_one(key.as_ref());
            match seen {
                Seen::Str(()) => {
                    bad.remove(&hash);
                    shown.remove(key.as_ref());
                }
                other => {
                    if bad.len() < ENV_DEDUP_LIMIT || bad.contains(&hash) {
                        bad.insert(hash);
                    } else {
                        untracked += 1;
                    }
                    shown.insert(key.clone(), other.kind());
                    if shown.len() > MAX_DETAILS {
                        shown.pop_last();
                    }
                }
            }
            record_entry(&mut entries, ctx, key, nul);
        }
        let mut errors = Errors::default();
        for (key, kind) in &shown {
            errors.push(|| detail(format!("environment.{key}"), type_message("String", *kind)));
        }
        errors.total = bad.len() + untracked;
        Ok((errors, entries_node(entries)))
    }
}

/// `tests`: an array of 1..=max_tests test objects. Items are checked as they come and
/// never kept; past the limit they are still checked (their problems counted) but the
/// array is not collected, only counted.
struct TestsSeed<'c> {
    ctx: &'c mut Ctx,
    remaining: u32,
}

impl<'de> DeserializeSeed<'de> for TestsSeed<'_> {
    type Value = (Slot<usize>, Option<Nul<'de>>);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl TestsSeed<'_> {
    fn not_array<'de>(kind: Kind, nul: Option<Nul<'de>>) -> (Slot<usize>, Option<Nul<'de>>) {
        let mut errors = Errors::default();
        errors.push(|| detail("tests", type_message("Array", kind)));
        (Slot { errors, value: 0 }, nul)
    }
}

impl<'de> Visitor<'de> for TestsSeed<'_> {
    type Value = (Slot<usize>, Option<Nul<'de>>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tests")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let nul = (text.contains('\0') && self.ctx.take_nul()).then_some(Nul::Here);
        Ok(Self::not_array(Kind::String, nul))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Self::not_array(Kind::Number, None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Self::not_array(Kind::Number, None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Self::not_array(Kind::Number, None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Self::not_array(Kind::Boolean, None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Self::not_array(Kind::Null, None))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let nul = walk_map(map, self.ctx, self.remaining)?;
        Ok(Self::not_array(Kind::Object, nul))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let inner = deeper::<A::Error>(self.remaining)?;
        let mut items_errors = Errors::default();
        let mut nuls = Vec::new();
        let mut count = 0usize;
        while let Some((errors, nul)) = seq.next_element_seed(TestSeed {
            ctx: &mut *ctx,
            remaining: inner,
            index: count,
            room: MAX_DETAILS - items_errors.shown.len(),
        })? {
            items_errors.extend(errors);
            if let Some(nul) = nul {
                nuls.push((count, nul));
            }
            count += 1;
        }
        let mut errors = Errors::default();
        if count < 1 {
            errors.push(|| detail("tests", "Must contain at least 1 item(s)"));
        }
        if count > ctx.max_tests {
            let max = ctx.max_tests;
            errors.push(|| detail("tests", format!("Must contain at most {max} item(s)")));
        }
        errors.extend(items_errors);
        let nul = (!nuls.is_empty()).then_some(Nul::Items(nuls));
        Ok((
            Slot {
                errors,
                value: count,
            },
            nul,
        ))
    }
}

/// One item of `tests`; `room`: how many of its problems can still be listed.
struct TestSeed<'c> {
    ctx: &'c mut Ctx,
    remaining: u32,
    index: usize,
    room: usize,
}

impl<'de> DeserializeSeed<'de> for TestSeed<'_> {
    type Value = (Errors, Option<Nul<'de>>);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl TestSeed<'_> {
    fn not_object<'de>(&self, kind: Kind, nul: Option<Nul<'de>>) -> (Errors, Option<Nul<'de>>) {
        let mut errors = Errors::with_room(self.room);
        let index = self.index;
        errors.push(|| detail(format!("tests.{index}"), type_message("Object", kind)));
        (errors, nul)
    }
}

/// The fields of a test object, in name order (the order problems are listed in).
const TEST_FIELDS: [&str; 8] = [
    "durationMs",
    "failureDetails",
    "metadata",
    "name",
    "path",
    "startedAt",
    "status",
    "tags",
];

impl<'de> Visitor<'de> for TestSeed<'_> {
    type Value = (Errors, Option<Nul<'de>>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a test object")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let nul = (text.contains('\0') && self.ctx.take_nul()).then_some(Nul::Here);
        Ok(self.not_object(Kind::String, nul))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(self.not_object(Kind::Number, None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(self.not_object(Kind::Number, None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(self.not_object(Kind::Number, None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.not_object(Kind::Boolean, None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.not_object(Kind::Null, None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let nul = walk_seq(seq, &mut *self.ctx, self.remaining)?;
        Ok(self.not_object(Kind::Array, nul))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let index = self.index;
        let room = self.room;
        let ctx = self.ctx;
        let inner = deeper::<A::Error>(self.remaining)?;
        // Per field (TEST_FIELDS order): `Some` once present, holding its problems.
        let mut fields: [Option<Errors>; 8] = Default::default();
        let mut entries = BTreeMap::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let Some(field) = TEST_FIELDS.iter().position(|f| *f == key.as_ref()) else {
                let (_, nul) = map.next_value_seed(AnySeed {
                    ctx: &mut *ctx,
                    remaining: inner,
                    on_str: ignore(),
                })?;
                record_entry(&mut entries, ctx, key, nul);
                continue;
            };
            let name = TEST_FIELDS[field];
            let path = || format!("tests.{index}.{name}");
            let mut errors = Errors::default();
            let nul = match name {
                "tags" => {
                    let (tag_errors, nul) = map.next_value_seed(TagsSeed {
                        ctx: &mut *ctx,
                        remaining: inner,
                        index,
                    })?;
                    errors = tag_errors;
                    nul
                }
                "status" => {
                    let (seen, nul) = map.next_value_seed(AnySeed {
                        ctx: &mut *ctx,
                        remaining: inner,
                        on_str: Check(|text: &str| STATUSES.contains(&text)),
                    })?;
                    if !matches!(seen, Seen::Str(true)) {
                        errors.push(|| detail(path(), enum_message(&STATUSES)));
                    }
                    nul
                }
                "durationMs" => {
                    let (seen, nul) = map.next_value_seed(AnySeed {
                        ctx: &mut *ctx,
                        remaining: inner,
                        on_str: ignore(),
                    })?;
                    match seen {
                        Seen::Number(n) => {
                            if !n.integer {
                                errors
                                    .push(|| detail(path(), type_message("Integer", Kind::Number)));
                            }
                            if !n.positive {
                                errors.push(|| detail(path(), "Must be greater than 0"));
                            }
                        }
                        other => {
                            let kind = other.kind();
                            errors.push(|| detail(path(), type_message("Integer", kind)));
                        }
                    }
                    nul
                }
                "metadata" => {
                    let (seen, nul) = map.next_value_seed(AnySeed {
                        ctx: &mut *ctx,
                        remaining: inner,
                        on_str: ignore(),
                    })?;
                    let kind = seen.kind();
                    if kind != Kind::Object {
                        errors.push(|| detail(path(), type_message("Object", kind)));
                    }
                    nul
                }
                _ => {
                    let rule = match name {
                        "startedAt" => Rule::DateTime,
                        "failureDetails" => Rule::Length {
                            min: 0,
                            max: rules::FAILURE_DETAILS_MAX,
                        },
                        _ => Rule::Length {
                            min: 1,
                            max: rules::TEST_TEXT_MAX,
                        },
                    };
                    let mut found = Errors::default();
                    let (seen, nul) = map.next_value_seed(AnySeed {
                        ctx: &mut *ctx,
                        remaining: inner,
                        on_str: Check(|text: &str| rule.check(text, &mut found, &path)),
                    })?;
                    if let Seen::Str(()) = seen {
                        errors = found;
                    } else {
                        let kind = seen.kind();
                        errors.push(|| detail(path(), type_message("String", kind)));
                    }
                    nul
                }
            };
            fields[field] = Some(errors);
            record_entry(&mut entries, ctx, key, nul);
        }
        let mut errors = Errors::with_room(room);
        for required in ["path", "name", "status", "startedAt"] {
            let present = TEST_FIELDS
                .iter()
                .position(|f| *f == required)
                .is_some_and(|i| fields[i].is_some());
            if !present {
                errors.push(|| detail(format!("tests.{index}.{required}"), "Required"));
            }
        }
        for field in fields.into_iter().flatten() {
            errors.extend(field);
        }
        Ok((errors, entries_node(entries)))
    }
}

/// `tests[].tags`: an array of strings.
struct TagsSeed<'c> {
    ctx: &'c mut Ctx,
    remaining: u32,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for TagsSeed<'_> {
    type Value = (Errors, Option<Nul<'de>>);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl TagsSeed<'_> {
    fn not_array<'de>(&self, kind: Kind, nul: Option<Nul<'de>>) -> (Errors, Option<Nul<'de>>) {
        let mut errors = Errors::default();
        let index = self.index;
        errors.push(|| detail(format!("tests.{index}.tags"), type_message("Array", kind)));
        (errors, nul)
    }
}

impl<'de> Visitor<'de> for TagsSeed<'_> {
    type Value = (Errors, Option<Nul<'de>>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tags")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let nul = (text.contains('\0') && self.ctx.take_nul()).then_some(Nul::Here);
        Ok(self.not_array(Kind::String, nul))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(self.not_array(Kind::Number, None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(self.not_array(Kind::Number, None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(self.not_array(Kind::Number, None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.not_array(Kind::Boolean, None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.not_array(Kind::Null, None))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let nul = walk_map(map, &mut *self.ctx, self.remaining)?;
        Ok(self.not_array(Kind::Object, nul))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let index = self.index;
        let ctx = self.ctx;
        let inner = deeper::<A::Error>(self.remaining)?;
        let mut errors = Errors::default();
        let mut nuls = Vec::new();
        let mut tag = 0usize;
        while let Some((seen, nul)) = seq.next_element_seed(AnySeed {
            ctx: &mut *ctx,
            remaining: inner,
            on_str: ignore(),
        })? {
            if !matches!(seen, Seen::Str(())) {
                let kind = seen.kind();
                errors.push(|| {
                    detail(
                        format!("tests.{index}.tags.{tag}"),
                        type_message("String", kind),
                    )
                });
            }
            if let Some(nul) = nul {
                nuls.push((tag, nul));
            }
            tag += 1;
        }
        Ok((errors, (!nuls.is_empty()).then_some(Nul::Items(nuls))))
    }
}
