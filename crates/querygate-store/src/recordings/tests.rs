//! Recorder tests: segmenting by time and size, bodies cut with the whole body's digest,
//! a clean stop writes what is buffered, numbering continues across restarts.

use std::time::Duration;

use querygate_core::recording::{DecisionEvent, RequestEvent, ResponseEvent};

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "qg-rec-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        Dir(p)
    }
    fn db(&self) -> PathBuf {
        self.0.join("qg.db")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn request(session: &str, identity: &str, n: u32) -> Capture {
    Capture {
        session: session.into(),
        identity: identity.into(),
        event: Event {
            time: format!("2026-11-27T10:00:{:02}.000000Z", n % 60),
            request_id: format!("qg-{n}"),
            what: EventKind::Request(RequestEvent {
                identity: identity.into(),
                source: "analytics".into(),
                method: "jobs.query".into(),
                statement: Some(format!("SELECT {n}")),
                ..RequestEvent::default()
            }),
        },
        attachment: None,
    }
}

fn decision(session: &str, n: u32) -> Capture {
    Capture {
        session: session.into(),
        identity: "agent:a".into(),
        event: Event {
            time: format!("2026-11-27T10:00:{:02}.000001Z", n % 60),
            request_id: format!("qg-{n}"),
            what: EventKind::Decision(DecisionEvent {
                decision: "allow".into(),
                ..DecisionEvent::default()
            }),
        },
        attachment: None,
    }
}

fn segments(db: &Path, session: &str) -> Vec<(i64, i64, i64)> {
    let conn = Connection::open(db).expect("open");
    let mut st = conn
        .prepare("SELECT seq, events, requests FROM recordings WHERE session_id = ?1 ORDER BY seq")
        .expect("prepare");
    st.query_map(params![session], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .and_then(|rows| rows.collect())
        .expect("rows")
}

#[test]
fn a_session_is_written_as_one_segment_per_interval() {
    let dir = Dir::new("interval");
    let options = RecorderOptions {
        flush_after: Duration::from_millis(100),
        ..RecorderOptions::default()
    };
    let rec = Recorder::start(&dir.db(), options).expect("start");
    rec.record(request("s1", "agent:a", 1));
    rec.record(decision("s1", 1));
    rec.record(request("s2", "agent:b", 2));
    // Nothing is written before the interval is over...
    std::thread::sleep(Duration::from_millis(20));
    assert!(segments(&dir.db(), "s1").is_empty());
    // ...and everything once it is, one segment per session.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(segments(&dir.db(), "s1"), vec![(1, 2, 1)]);
    assert_eq!(segments(&dir.db(), "s2"), vec![(1, 1, 1)]);
    // The next events of the session make its next segment.
    rec.record(request("s1", "agent:a", 3));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(segments(&dir.db(), "s1"), vec![(1, 2, 1), (2, 1, 1)]);
    let events = rec.events("s1", None).expect("events");
    let ids: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.request_id.as_str(), e.kind()))
        .collect();
    assert_eq!(
        ids,
        [
            ("qg-1", "request"),
            ("qg-1", "decision"),
            ("qg-3", "request")
        ]
    );
    let listed = rec.sessions(&SessionFilter::default()).expect("list");
    assert_eq!(listed.len(), 2);
    let s1 = listed.iter().find(|s| s.id == "s1").expect("s1");
    assert_eq!((s1.requests, s1.events, s1.segments), (2, 3, 2));
    assert_eq!(s1.identities, ["agent:a"]);
    assert!(s1.stored_bytes > 0 && s1.raw_bytes > 0);
    // Retention deletes whole segments by the time of their last event.
    assert_eq!(rec.prune("2026-11-27T10:00:02.000000Z").expect("prune"), 1);
    assert_eq!(segments(&dir.db(), "s1"), vec![(2, 1, 1)]);
    let only_b = rec
        .sessions(&SessionFilter {
            identity: Some("agent:b".into()),
            ..SessionFilter::default()
        })
        .expect("list");
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].id, "s2");
    let since = rec
        .sessions(&SessionFilter {
            since: Some("2026-11-27T10:00:03.000000Z".into()),
            ..SessionFilter::default()
        })
        .expect("list");
    assert_eq!(since.len(), 1, "{since:?}");
}

#[test]
fn a_full_buffer_is_written_at_once_and_a_clean_stop_writes_the_rest() {
    let dir = Dir::new("size");
    let options = RecorderOptions {
        flush_after: Duration::from_secs(3600),
        segment_bytes: 1024,
        ..RecorderOptions::default()
    };
    let rec = Recorder::start(&dir.db(), options).expect("start");
    for n in 0..30 {
        rec.record(request("big", "agent:a", n));
    }
    rec.flush();
    let written = segments(&dir.db(), "big");
    assert!(written.len() >= 3, "{written:?}");
    assert_eq!(written.iter().map(|s| s.1).sum::<i64>(), 30);
    rec.record(request("big", "agent:a", 31));
    rec.close();
    assert_eq!(
        segments(&dir.db(), "big").iter().map(|s| s.1).sum::<i64>(),
        31
    );
    // A later run continues the session's numbering.
    let rec = Recorder::start(&dir.db(), options).expect("restart");
    rec.record(request("big", "agent:a", 32));
    rec.close();
    let seqs: Vec<i64> = segments(&dir.db(), "big").iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let reader = RecordingReader::open(&dir.db()).expect("reader");
    let events = reader.events("big", None).expect("events");
    assert_eq!(events.len(), 32);
    assert!(events.windows(2).all(|w| w[0].time <= w[1].time));
    let summary = reader.session("big").expect("read").expect("recorded");
    assert_eq!(summary.requests, 32);
    assert!(reader.session("nope").expect("read").is_none());
}

#[test]
fn bodies_are_cut_at_the_limit_with_the_whole_bodys_digest() {
    let dir = Dir::new("body");
    let rec = Recorder::start(&dir.db(), RecorderOptions::default()).expect("start");
    // 'é' is two bytes: a cut in its middle steps back before it.
    let body = Bytes::from(format!("{{\"v\":\"{}\"}}", "é".repeat(100)));
    for (n, limit) in [(1, 10_000), (2, 9)] {
        rec.record(Capture {
            session: "b".into(),
            identity: "agent:a".into(),
            event: Event {
                time: format!("2026-11-27T10:00:0{n}.000000Z"),
                request_id: format!("qg-{n}"),
                what: EventKind::Response(ResponseEvent {
                    status: 200,
                    ..ResponseEvent::default()
                }),
            },
            attachment: Some(Attachment {
                body: body.clone(),
                limit,
            }),
        });
    }
    rec.flush();
    let events = rec.events("b", None).expect("events");
    let responses: Vec<&ResponseEvent> = events
        .iter()
        .filter_map(|e| match &e.what {
            EventKind::Response(r) => Some(r),
            _ => None,
        })
        .collect();
    let digest = hex::encode(Sha256::digest(&body));
    assert_eq!(
        responses[0].body.as_deref(),
        std::str::from_utf8(&body).ok()
    );
    assert!(!responses[0].truncated);
    assert_eq!(responses[1].body.as_deref(), Some("{\"v\":\"é"));
    assert!(responses[1].truncated);
    for r in &responses {
        assert_eq!(r.total_bytes, Some(body.len() as u64));
        assert_eq!(r.sha256.as_deref(), Some(digest.as_str()));
    }
}

#[test]
fn identities_of_one_session_are_kept_apart_and_read_in_time_order() {
    let dir = Dir::new("two");
    let rec = Recorder::start(&dir.db(), RecorderOptions::default()).expect("start");
    rec.record(request("shared", "agent:a", 1));
    rec.record(request("shared", "agent:b", 2));
    rec.record(request("shared", "agent:a", 3));
    rec.close();
    let reader = RecordingReader::open(&dir.db()).expect("reader");
    let all = reader.events("shared", None).expect("events");
    let ids: Vec<&str> = all.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, ["qg-1", "qg-2", "qg-3"]);
    let own = reader.events("shared", Some("agent:b")).expect("events");
    assert_eq!(own.len(), 1);
    let summary = reader.session("shared").expect("read").expect("recorded");
    let mut who = summary.identities.clone();
    who.sort();
    assert_eq!(who, ["agent:a", "agent:b"]);
}

#[test]
fn a_store_without_recordings_reads_as_empty() {
    let dir = Dir::new("empty");
    drop(crate::Store::open(&dir.db()).expect("store"));
    let reader = RecordingReader::open(&dir.db()).expect("reader");
    assert!(
        reader
            .sessions(&SessionFilter::default())
            .expect("list")
            .is_empty()
    );
    assert!(reader.events("x", None).expect("events").is_empty());
}

#[test]
fn a_stopped_recorder_drops_and_counts() {
    let dir = Dir::new("stopped");
    let rec = Recorder::start(&dir.db(), RecorderOptions::default()).expect("start");
    rec.close();
    rec.record(request("late", "agent:a", 1));
    assert_eq!(rec.dropped(), 1);
}
