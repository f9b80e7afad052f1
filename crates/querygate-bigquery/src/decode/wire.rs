//! The request line, read once: the path's segments and the query string's parameters.
//!
//! A gateway must decide on exactly the call the upstream will execute, so neither is
//! forwarded as the client wrote it. Each path segment is percent-decoded once, refused
//! when its decoded form could be read as something else (a `/`, `\`, `?`, `#`, `%` or
//! `;`, a control character, `.` or `..`, an empty segment, bytes that are not UTF-8),
//! and forwarded in one canonical encoding. The query string is parsed once (`+` is a
//! space, keys and values percent-decoded, `snake_case` names read as the `lowerCamelCase`
//! names Google's front ends also accept for them), every parameter must be one the
//! method defines and appear once, and the query forwarded is rebuilt from what was read:
//! one value per name, canonically encoded, without credentials or `allUsers`.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The path below the API root: `/bigquery/v2/x` and `/x` (Node's emulator form) both
/// give `x`; `/upload/bigquery/v2/x` gives `x` too.
pub(super) fn api_path(path: &str) -> &str {
    let path = strip_dir(path, "/upload");
    strip_dir(path, "/bigquery/v2")
}

/// `path` without the leading directory `dir` (only a whole directory: `/bigquery/v2x`
/// keeps its prefix).
fn strip_dir<'a>(path: &'a str, dir: &str) -> &'a str {
    match path.strip_prefix(dir) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

/// Whether the path is under the media upload root.
pub(super) fn is_upload(path: &str) -> bool {
    path.starts_with("/upload/")
}

/// The decoded segments of the API path, or why the path cannot be read one way only.
pub(super) fn segments(path: &str) -> Result<Vec<String>, String> {
    let rest = api_path(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/')
        .enumerate()
        .map(|(i, s)| segment(i, s))
        .collect()
}

/// One path segment, decoded and checked.
fn segment(index: usize, raw: &str) -> Result<String, String> {
    let refuse = |why: &str| {
        Err(format!(
            "Invalid path: segment {} (`{}`) {why}; querygate forwards only paths that \
             every server reads as the same call. Send each name as it is, percent-encoding \
             only characters a URL cannot hold",
            index + 1,
            raw.escape_debug()
        ))
    };
    if raw.is_empty() {
        return refuse("is empty (`//` or a trailing `/`)");
    }
    let bytes = match percent_decode_strict(raw) {
        Ok(b) => b,
        Err(()) => return refuse("has a `%` that is not followed by two hex digits"),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return refuse("does not decode to UTF-8 text");
    };
    if text == "." || text == ".." {
        return refuse("is a dot segment");
    }
    if let Some(c) = text.chars().find(|c| forbidden_in_segment(*c)) {
        return refuse(&format!(
            "decodes to `{}`, which holds `{}`; no BigQuery name does",
            text.escape_debug(),
            c.escape_debug()
        ));
    }
    Ok(text)
}

/// Characters no BigQuery project, dataset, table or job id holds, and which a server
/// could read as structure: separators, a second round of percent-decoding, path
/// parameters, control characters.
fn forbidden_in_segment(c: char) -> bool {
    matches!(c, '/' | '\\' | '?' | '#' | '%' | ';') || c.is_control()
}

/// Percent-decodes `s`; `Err` when a `%` is not followed by two hex digits.
fn percent_decode_strict(s: &str) -> Result<Vec<u8>, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|h| (*h as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|l| (*l as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(());
            };
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// Characters a path segment keeps unencoded: RFC 3986 unreserved, and `:` and `@`
/// (domain-scoped project ids, `example.com:project`).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':')
    .remove(b'@');

/// Characters a query name or value keeps unencoded: RFC 3986 unreserved only.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The segments joined in their canonical encoding.
pub(super) fn join(segments: &[&str]) -> String {
    segments
        .iter()
        .map(|s| utf8_percent_encode(s, PATH_SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Parameters never forwarded upstream, by their decoded name: credentials, `allUsers` (the
/// gateway lists only the caller's jobs), and `fields`: a partial response could leave out
/// what the gateway reads of an answer (`totalRows`, which row limits are checked against; a
/// job's reference, which ownership is claimed by). Clients read a whole answer alike.
const DROPPED: &[&str] = &["accessToken", "oauthToken", "key", "allUsers", "fields"];

/// Options of the Node client that it leaves in a query string although no BigQuery
/// method defines them (BigQuery ignores them): dropped, by the name the client sends.
const CLIENT_ONLY: &[&str] = &[
    "wrapIntegers",
    "parseJSON",
    "skipParsing",
    "autoPaginate",
    "maxApiCalls",
    "job",
    "_cachedRows",
    "_cachedResponse",
];

/// Parameters every Google API method takes (`alt` only as `json`; `callback`, JSONP,
/// is not taken: its answer is not JSON the gateway can read).
const STANDARD: &[&str] = &[
    "$.xgafv",
    "alt",
    "fields",
    "prettyPrint",
    "quotaUser",
    "userIp",
];

/// The query parameters a method defines (BigQuery REST v2), besides [`STANDARD`].
fn defined(method: &str) -> &'static [&'static str] {
    match method {
        "jobs.getQueryResults" => &[
            "formatOptions.timestampOutputFormat",
            "formatOptions.useInt64Timestamp",
            "location",
            "maxResults",
            "pageToken",
            "startIndex",
            "timeoutMs",
        ],
        // `projection` is jobs.list's, but the Python client sends it to jobs.get and
        // jobs.cancel too; BigQuery ignores it there.
        "jobs.get" | "jobs.cancel" => &["location", "projection"],
        "jobs.list" => &[
            "maxCreationTime",
            "minCreationTime",
            "maxResults",
            "pageToken",
            "parentJobId",
            "projection",
            "stateFilter",
        ],
        "tabledata.list" => &[
            "formatOptions.timestampOutputFormat",
            "formatOptions.useInt64Timestamp",
            "maxResults",
            "pageToken",
            "selectedFields",
            "startIndex",
        ],
        "datasets.list" => &["all", "filter", "maxResults", "pageToken"],
        "datasets.get" => &["accessPolicyVersion", "datasetView"],
        "tables.list" => &["maxResults", "pageToken"],
        "tables.get" => &["selectedFields", "view"],
        _ => &[],
    }
}

/// Parameters BigQuery defines as repeated: given several times, every value counts.
const REPEATED: &[&str] = &["stateFilter"];

/// The query string as the gateway read it: decoded names (in their `lowerCamelCase`
/// form) and values, in the client's order, credentials and client-only options removed.
#[derive(Debug, Default)]
pub(super) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Reads the query string of a call of `method`; `Err` says what to change.
    pub(super) fn read(raw: Option<&str>, method: &str) -> Result<Params, String> {
        let refuse = |why: String| Err(format!("Invalid query string: {why}"));
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in parse(raw.unwrap_or(""))? {
            let canonical = camel(&name);
            if seen.contains(&canonical) && !REPEATED.contains(&canonical.as_str()) {
                return refuse(format!(
                    "the parameter `{}` is given more than once (as `{}`); send it once",
                    canonical.escape_debug(),
                    name.escape_debug()
                ));
            }
            seen.push(canonical.clone());
            if DROPPED.contains(&canonical.as_str()) || CLIENT_ONLY.contains(&name.as_str()) {
                continue;
            }
            if !STANDARD.contains(&canonical.as_str())
                && !defined(method).contains(&canonical.as_str())
            {
                return refuse(format!(
                    "querygate does not recognise the parameter `{}` of {method}; remove it",
                    name.escape_debug()
                ));
            }
            if canonical == "alt" && !value.eq_ignore_ascii_case("json") {
                return refuse(format!(
                    "alt={} asks for an answer that is not JSON, and querygate reads answers \
                     as JSON; leave `alt` out",
                    value.escape_debug()
                ));
            }
            pairs.push((canonical, value));
        }
        Ok(Params { pairs })
    }

    /// The value of a parameter, if given.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query string to forward, without `?`: what was read, canonically encoded.
    pub(super) fn forwarded(&self) -> Option<String> {
        (!self.pairs.is_empty()).then(|| {
            self.pairs
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        utf8_percent_encode(k, QUERY_COMPONENT),
                        utf8_percent_encode(v, QUERY_COMPONENT)
                    )
                })
                .collect::<Vec<_>>()
                .join("&")
        })
    }
}

/// Splits and decodes a query string (`application/x-www-form-urlencoded`: `&` between
/// pairs, `+` a space); `Err` for what a server could split or decode another way.
pub(super) fn parse(raw: &str) -> Result<Vec<(String, String)>, String> {
    let refuse = |why: String| Err(format!("Invalid query string: {why}"));
    if raw.contains(';') {
        return refuse(
            "it holds `;`, which some servers read as a separator; percent-encode it as %3B".into(),
        );
    }
    let mut out = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |part: &str| -> Result<String, String> {
            let bytes = percent_decode_strict(&part.replace('+', " ")).map_err(|()| {
                format!(
                    "Invalid query string: `{}` has a `%` that is not followed by two hex digits",
                    part.escape_debug()
                )
            })?;
            String::from_utf8(bytes).map_err(|_| {
                format!(
                    "Invalid query string: `{}` does not decode to UTF-8 text",
                    part.escape_debug()
                )
            })
        };
        let name = decode(name)?;
        if name.is_empty() {
            return refuse(format!("`{}` has no parameter name", pair.escape_debug()));
        }
        out.push((name, decode(value)?));
    }
    Ok(out)
}

/// The `lowerCamelCase` form of a parameter name, as Google's front ends map a proto
/// field name to its JSON name (`selected_fields` → `selectedFields`,
/// `format_options.use_int64_timestamp` → `formatOptions.useInt64Timestamp`).
pub(super) fn camel(name: &str) -> String {
    if !name.contains('_') {
        return name.to_string();
    }
    name.split('.')
        .map(|part| {
            let mut out = String::with_capacity(part.len());
            let mut upper = false;
            for c in part.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(".")
}
