//! Value detectors: find sensitive values in result text, with validators that keep
//! precision (a 9-digit order id is not an SSN; a Luhn-invalid number is not a card).
//!
//! A `RegexSet` over every enabled kind is the prefilter: most cells match nothing and
//! cost one pass. Only cells it flags run the per-kind regexes and validators. When
//! findings overlap, the kind earlier in [`DetectorKind::ALL`] wins.

use std::borrow::Cow;

use regex::{Regex, RegexSet};

use crate::strategy::{Strategy, mask_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectorKind {
    Secret,
    Card,
    Iban,
    Ssn,
    Email,
    Phone,
    Ip,
}

/// A detector name that is not one of the detectors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("detector {name:?} must be one of secret, card, iban, ssn, email, phone, ip")]
pub struct DetectorError {
    pub name: String,
}

impl DetectorKind {
    /// Every kind, in priority order.
    pub const ALL: [DetectorKind; 7] = [
        DetectorKind::Secret,
        DetectorKind::Card,
        DetectorKind::Iban,
        DetectorKind::Ssn,
        DetectorKind::Email,
        DetectorKind::Phone,
        DetectorKind::Ip,
    ];

    pub fn parse(text: &str) -> Result<DetectorKind, DetectorError> {
        DetectorKind::ALL
            .into_iter()
            .find(|k| k.name() == text)
            .ok_or_else(|| DetectorError {
                name: text.to_string(),
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Secret => "secret",
            DetectorKind::Card => "card",
            DetectorKind::Iban => "iban",
            DetectorKind::Ssn => "ssn",
            DetectorKind::Email => "email",
            DetectorKind::Phone => "phone",
            DetectorKind::Ip => "ip",
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            DetectorKind::Secret => concat!(
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
                r"|\bAKIA[0-9A-Z]{16}\b",
                r"|\bgh[pousr]_[A-Za-z0-9]{36}\b",
                r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
                r"|\bAIza[0-9A-Za-z_-]{35}\b",
                r"|\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}"
            ),
            // 13-19 digits in one run, in groups of four, or Amex's 4-6-5.
            DetectorKind::Card => {
                r"\b\d{13,19}\b|\b(?:\d{4}[ -]){3}\d{1,7}\b|\b\d{4}[ -]\d{6}[ -]\d{5}\b"
            }
            DetectorKind::Iban => r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
            DetectorKind::Ssn => r"\b\d{3}-\d{2}-\d{4}\b",
            DetectorKind::Email => {
                r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
            }
            // International numbers need the `+`; national ones the (NNN) or NNN-NNN-NNNN shape,
            // so that groups of digits in card or account numbers are not phones.
            DetectorKind::Phone => concat!(
                r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,4}\b",
                r"|\(\d{3}\) ?\d{3}[.-]\d{4}\b",
                r"|\b\d{3}[.-]\d{3}[.-]\d{4}\b"
            ),
            DetectorKind::Ip => {
                r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b"
            }
        }
    }

    fn valid(self, m: &str) -> bool {
        match self {
            DetectorKind::Card => {
                let digits: Vec<u32> = m.chars().filter_map(|c| c.to_digit(10)).collect();
                (13..=19).contains(&digits.len()) && luhn(&digits)
            }
            DetectorKind::Iban => iban_ok(m),
            DetectorKind::Ssn => {
                let p: Vec<&str> = m.split('-').collect();
                let area: u32 = p[0].parse().unwrap_or(0);
                area != 0 && area != 666 && area < 900 && p[1] != "00" && p[2] != "0000"
            }
            DetectorKind::Phone => {
                let n = m.chars().filter(char::is_ascii_digit).count();
                (10..=15).contains(&n)
            }
            DetectorKind::Ip => {
                if m.contains(':') {
                    return true;
                }
                m.split('.')
                    .all(|o| o.parse::<u16>().is_ok_and(|v| v <= 255))
            }
            DetectorKind::Secret | DetectorKind::Email => true,
        }
    }
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 mod-97 check.
fn iban_ok(m: &str) -> bool {
    let s: String = m.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    let (head, tail) = s.split_at(4);
    let mut rem: u64 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c.to_digit(36) {
            Some(v) => v as u64,
            None => return false,
        };
        let (mul, add) = if v >= 10 { (100, v) } else { (10, v) };
        rem = (rem * mul + add) % 97;
    }
    rem == 1
}

/// One sensitive value found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: DetectorKind,
    pub start: usize,
    pub end: usize,
}

/// A compiled set of detectors.
#[derive(Debug, Clone)]
pub struct Detector {
    kinds: Vec<DetectorKind>,
    prefilter: RegexSet,
    each: Vec<Regex>,
}

impl Detector {
    pub fn new(kinds: &[DetectorKind]) -> Detector {
        let mut kinds: Vec<DetectorKind> = DetectorKind::ALL
            .into_iter()
            .filter(|k| kinds.contains(k))
            .collect();
        kinds.dedup();
        let patterns: Vec<&str> = kinds.iter().map(|k| k.pattern()).collect();
        Detector {
            // The patterns are constants tested below; an empty set never matches.
            prefilter: RegexSet::new(&patterns).unwrap_or_else(|_| RegexSet::empty()),
            each: patterns.iter().filter_map(|p| Regex::new(p).ok()).collect(),
            kinds,
        }
    }

    /// Every finding, non-overlapping, in text order.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let hits = self.prefilter.matches(text);
        if !hits.matched_any() {
            return Vec::new();
        }
        let mut found: Vec<Finding> = Vec::new();
        for i in hits.iter() {
            let (Some(kind), Some(re)) = (self.kinds.get(i), self.each.get(i)) else {
                continue;
            };
            for m in re.find_iter(text) {
                let overlaps = found.iter().any(|f| m.start() < f.end && f.start < m.end());
                if !overlaps && kind.valid(m.as_str()) {
                    found.push(Finding {
                        kind: *kind,
                        start: m.start(),
                        end: m.end(),
                    });
                }
            }
        }
        found.sort_by_key(|f| f.start);
        found
    }

    /// The text with every finding masked by `strategy`.
    pub fn mask<'a>(&self, text: &'a str, strategy: Strategy, key: &[u8]) -> Cow<'a, str> {
        let found = self.find(text);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            out.push_str(&text[at..f.start]);
            out.push_str(&mask_text(strategy, &text[f.start..f.end], key));
            at = f.end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }
}

/// Detectors with the strategy that masks what they find: what a source's
/// `detect = [...]` becomes, applied to every value a result returns.
#[derive(Debug, Clone)]
pub struct Scrubber {
    detector: Detector,
    strategy: Strategy,
    key: Vec<u8>,
}

impl Scrubber {
    /// `key` is the secret for the `hash` strategy (unused by the others).
    pub fn new(kinds: &[DetectorKind], strategy: Strategy, key: Vec<u8>) -> Scrubber {
        Scrubber {
            detector: Detector::new(kinds),
            strategy,
            key,
        }
    }

    /// The value with what the detectors find masked; borrowed when nothing was found.
    pub fn scrub<'a>(&self, value: &'a str) -> Cow<'a, str> {
        self.detector.mask(value, self.strategy, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        Detector::new(&DetectorKind::ALL)
            .find(text)
            .iter()
            .map(|f| f.kind.name())
            .collect()
    }

    #[test]
    fn finds_what_it_should() {
        assert_eq!(kinds("mail ada.lovelace@example.co.uk now"), vec!["email"]);
        assert_eq!(kinds("card 4111 1111 1111 1111"), vec!["card"]);
        assert_eq!(kinds("ssn 123-45-6789"), vec!["ssn"]);
        assert_eq!(kinds("iban DE89 3704 0044 0532 0130 00"), vec!["iban"]);
        assert_eq!(kinds("call +1 415-555-0132"), vec!["phone"]);
        assert_eq!(kinds("from 10.0.12.255"), vec!["ip"]);
        assert_eq!(kinds("key AKIAIOSFODNN7EXAMPLE"), vec!["secret"]);
        assert_eq!(kinds("-----BEGIN RSA PRIVATE KEY-----"), vec!["secret"]);
        assert_eq!(
            kinds("tok eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"),
            vec!["secret"]
        );
    }

    #[test]
    fn leaves_lookalikes_alone() {
        assert!(
            kinds("order 123456789").is_empty(),
            "9-digit ids are not SSNs"
        );
        assert!(kinds("card 4111 1111 1111 1112").is_empty(), "Luhn-invalid");
        assert!(kinds("ssn 000-12-3456 666-12-3456 900-12-3456").is_empty());
        assert!(
            kinds("iban DE89 3704 0044 0532 0130 01").is_empty(),
            "bad checksum"
        );
        assert!(kinds("version 1.2.3.400").is_empty(), "not an IP");
        assert!(kinds("total 2024-01-05").is_empty());
    }

    #[test]
    fn masks_in_place() {
        let d = Detector::new(&[DetectorKind::Email, DetectorKind::Card]);
        assert_eq!(
            d.mask("a@b.io paid with 4111111111111111.", Strategy::Last4, b""),
            "**b.io paid with ************1111."
        );
        assert_eq!(
            d.mask("nothing here", Strategy::Redact, b""),
            "nothing here"
        );
        assert!(matches!(
            d.mask("nothing", Strategy::Redact, b""),
            Cow::Borrowed(_)
        ));
    }
}
