//! Store tests: durability of appends, the chain on disk, and tamper detection
//! through the same SQL an attacker with the file would run.

use super::*;

fn record(statement: &str) -> AuditRecord {
    let mut r = AuditRecord::default_for("jobs.query", "agent:x");
    r.time = "2026-11-27T10:00:00Z".into();
    r.request_id = "r".into();
    r.source = "s".into();
    r.statement = Some(statement.into());
    r.decision = "allow".into();
    r
}

async fn store_with(n: usize) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let store = Store::open(&path).expect("open");
    let mut handles = Vec::new();
    let store = std::sync::Arc::new(store);
    for i in 1..=n {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            s.append(record(&format!("SELECT {i}"))).await
        }));
    }
    for h in handles {
        h.await.expect("join").expect("append");
    }
    (dir, path)
}

fn verify(path: &Path) -> Result<VerifyReport, querygate_core::audit::ChainBreak> {
    Reader::open(path).expect("reader").verify().expect("read")
}

fn tamper(path: &Path, sql: &str) {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete; {sql}"
    ))
    .expect("tamper");
}

#[tokio::test]
async fn concurrent_appends_form_one_chain() {
    let (_d, path) = store_with(50).await;
    let report = verify(&path).expect("intact");
    assert_eq!(report.records, 50);
    let mut seen = Vec::new();
    Reader::open(&path)
        .expect("reader")
        .records(&AuditFilter::default(), Some(3), |r| {
            seen.push(r.record.seq)
        })
        .expect("records");
    assert_eq!(seen, vec![48, 49, 50]);
}

#[tokio::test]
async fn triggers_refuse_update_and_delete() {
    let (_d, path) = store_with(2).await;
    let conn = Connection::open(&path).expect("open");
    let e = conn
        .execute("UPDATE audit_log SET record = 'x' WHERE seq = 1", [])
        .expect_err("update refused");
    assert!(e.to_string().contains("append-only"), "{e}");
    assert!(conn.execute("DELETE FROM audit_log", []).is_err());
}

#[tokio::test]
async fn edit_is_detected_and_named() {
    let (_d, path) = store_with(5).await;
    tamper(
        &path,
        "UPDATE audit_log SET record = replace(record, 'allow', 'deny') WHERE seq = 3",
    );
    assert_eq!(verify(&path).expect_err("edited").seq, 3);
}

#[tokio::test]
async fn deletion_is_detected_and_named() {
    let (_d, path) = store_with(5).await;
    tamper(&path, "DELETE FROM audit_log WHERE seq = 2");
    assert_eq!(verify(&path).expect_err("deleted").seq, 3);
}

#[tokio::test]
async fn reorder_is_detected_and_named() {
    let (_d, path) = store_with(5).await;
    tamper(
        &path,
        "UPDATE audit_log SET seq = 100 WHERE seq = 2;
         UPDATE audit_log SET seq = 2 WHERE seq = 4;
         UPDATE audit_log SET seq = 4 WHERE seq = 100;",
    );
    assert_eq!(verify(&path).expect_err("reordered").seq, 2);
}

#[tokio::test]
async fn insertion_is_detected_and_named() {
    let (_d, path) = store_with(5).await;
    // Make room at 3 (in two steps, so the primary key never collides), then copy row 2 there.
    tamper(
        &path,
        "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 3;
         UPDATE audit_log SET seq = seq - 99 WHERE seq >= 103;
         INSERT INTO audit_log (seq, record, prev_hash, hash)
           SELECT 3, record, prev_hash, hash FROM audit_log WHERE seq = 2;",
    );
    assert_eq!(verify(&path).expect_err("inserted").seq, 3);
}

#[tokio::test]
async fn job_claims_keep_the_first_owner() {
    let dir = tempdir::Dir::new();
    let store = Store::open(&dir.0.join("qg.db")).expect("open");
    let job = |who: &str, dest: Option<&str>| JobRow {
        source: "s".into(),
        job_id: "j1".into(),
        identity: who.into(),
        destination: dest.map(Into::into),
        schema: None,
        row_limit: None,
        sensitive: false,
    };
    store.claim_job(job("agent:a", None)).await.expect("claim");
    store
        .claim_job(job("agent:b", Some("p._anon.t")))
        .await
        .expect("claim");
    let row = store.job("s", "j1").expect("read").expect("exists");
    assert_eq!(row.identity, "agent:a");
    assert_eq!(row.destination.as_deref(), Some("p._anon.t"));
    assert!(
        store
            .owns_destination("s", "agent:a", "p._anon.t")
            .expect("read")
    );
    assert!(
        !store
            .owns_destination("s", "agent:b", "p._anon.t")
            .expect("read")
    );
    assert_eq!(store.jobs_of("s", "agent:a").expect("read"), vec!["j1"]);
}

/// A temporary directory removed on drop (no extra dependency for one helper).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "qg-store-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&p).expect("mkdir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn usage_adds_up_per_identity_and_day() {
    let dir = tempdir::Dir::new();
    let store = Store::open(&dir.0.join("qg.db")).expect("open");
    for (bytes, rows) in [(100, 3), (250, 0), (0, 40), (0, 0)] {
        store
            .append_with(
                record("SELECT 1"),
                Alongside {
                    claim: None,
                    usage: Some(Usage { bytes, rows }),
                },
            )
            .await
            .expect("append");
    }
    let spent = Usage {
        bytes: 350,
        rows: 43,
    };
    assert_eq!(store.usage("agent:x", "2026-11-27").expect("usage"), spent);
    // Once indexed in SQLite, the same.
    store.flush().await.expect("flush");
    assert_eq!(store.usage("agent:x", "2026-11-27").expect("usage"), spent);
    assert_eq!(
        store.usage("agent:x", "2026-11-28").expect("usage"),
        Usage::default()
    );
    assert_eq!(
        store.usage("agent:y", "2026-11-27").expect("usage"),
        Usage::default()
    );
}

/// A caller's queued completion is chained before the record it awaits next (a
/// connection's statements read in order in the log), whatever the writer was doing.
#[tokio::test]
async fn a_callers_records_are_chained_in_the_order_it_made_them() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let store = Store::open(&path).expect("open");
    for i in 0..200 {
        store
            .enqueue(record(&format!("completed {i}")), Alongside::default())
            .expect("enqueue");
        store
            .append(record(&format!("decided {}", i + 1)))
            .await
            .expect("append");
    }
    store.flush().await.expect("flush");
    drop(store);
    let mut order = Vec::new();
    Reader::open(&path)
        .expect("reader")
        .records(&AuditFilter::default(), None, |r| {
            order.push(r.record.statement.clone().unwrap_or_default())
        })
        .expect("read");
    let at = |s: &str| order.iter().position(|x| x == s).expect(s);
    for i in 0..200 {
        assert!(
            at(&format!("completed {i}")) < at(&format!("decided {}", i + 1)),
            "completed {i} was chained after the next decided record"
        );
    }
}

#[tokio::test]
async fn a_store_indexed_by_json_extract_is_indexed_by_columns_once_opened() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    // The schema before the index columns, with two chained records.
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, record TEXT NOT NULL,
                 prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
             CREATE INDEX audit_by_time ON audit_log (json_extract(record, '$.time'));
             CREATE INDEX audit_by_identity ON audit_log
                 (json_extract(record, '$.identity'), json_extract(record, '$.time'));
             CREATE INDEX audit_by_ticket ON audit_log (json_extract(record, '$.ticket'))
                 WHERE json_extract(record, '$.ticket') IS NOT NULL;
             CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_log
                 BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;",
        )
        .expect("old schema");
        let mut prev = querygate_core::audit::GENESIS.to_string();
        for (seq, who, ticket) in [(1u64, "agent:x", None), (2, "agent:y", Some("T-1"))] {
            let mut r = record("SELECT 1");
            r.seq = seq;
            r.identity = who.into();
            r.ticket = ticket.map(str::to_string);
            let text = r.canonical();
            let hash = querygate_core::audit::chain_hash(&prev, &text);
            conn.execute(
                "INSERT INTO audit_log VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![seq as i64, text, prev, hash],
            )
            .expect("insert");
            prev = hash;
        }
    }
    // An `audit` command before any gateway of this version opened it still finds them.
    let found = |filter: &AuditFilter| {
        let mut seqs = Vec::new();
        Reader::open(&path)
            .expect("reader")
            .records(filter, None, |r| seqs.push(r.record.seq))
            .expect("read");
        seqs
    };
    let by_ticket = AuditFilter {
        ticket: Some("T-1".into()),
        ..AuditFilter::default()
    };
    assert_eq!(found(&by_ticket), vec![2]);
    let store = Store::open(&path).expect("open");
    let mut r = record("SELECT 3");
    r.identity = "agent:y".into();
    store.append(r).await.expect("append");
    store.flush().await.expect("flush");
    drop(store);
    let by_identity = AuditFilter {
        identity: Some("agent:y".into()),
        since: Some("2026-11-27T00:00:00Z".into()),
        ..AuditFilter::default()
    };
    assert_eq!(found(&by_identity), vec![2, 3]);
    assert_eq!(found(&by_ticket), vec![2]);
    assert_eq!(verify(&path).expect("intact").records, 3);
    // The columns were filled, the JSON indexes are gone, and the table is append-only still.
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    let keys: Vec<(String, Option<String>)> = conn
        .prepare("SELECT identity, ticket FROM audit_log ORDER BY seq")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()
        })
        .expect("columns");
    assert_eq!(
        keys,
        vec![
            ("agent:x".to_string(), None),
            ("agent:y".to_string(), Some("T-1".to_string())),
            ("agent:y".to_string(), None),
        ]
    );
    let json_indexes: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql LIKE '%json_extract%'",
            [],
            |r| r.get(0),
        )
        .expect("indexes");
    assert_eq!(json_indexes, 0);
    assert!(
        conn.execute("UPDATE audit_log SET identity = 'x'", [])
            .is_err()
    );
}

#[tokio::test]
async fn a_store_made_before_row_budgets_counts_rows_once_opened() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE usage (identity TEXT NOT NULL, day TEXT NOT NULL,
                 bytes INTEGER NOT NULL, PRIMARY KEY (identity, day));
             INSERT INTO usage VALUES ('agent:x', '2026-11-27', 500);",
        )
        .expect("old schema");
    }
    let store = Store::open(&path).expect("open");
    store
        .append_with(
            record("SELECT 1"),
            Alongside {
                claim: None,
                usage: Some(Usage { bytes: 1, rows: 9 }),
            },
        )
        .await
        .expect("append");
    store.flush().await.expect("flush");
    assert_eq!(
        store.usage("agent:x", "2026-11-27").expect("usage"),
        Usage {
            bytes: 501,
            rows: 9
        }
    );
}

#[test]
fn stored_keys_are_found_by_hash_and_revoked_from_another_connection() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let store = Store::open(&path).expect("open");
    let admin = KeyAdmin::open(&path).expect("admin");
    let key = |hash: &str, identity: &str| StoredKey {
        key_sha256: hash.into(),
        identity: identity.into(),
        groups: vec!["agents".into()],
        kind: Some("agent".into()),
        created: 1_000,
        expires: Some(2_000),
        revoked: None,
    };
    let a = "aaaaaaaa11111111111111111111111111111111111111111111111111111111";
    let b = "aaaaaaaa22222222222222222222222222222222222222222222222222222222";
    let c = "cccccccc33333333333333333333333333333333333333333333333333333333";
    admin.add(&key(a, "agent:one")).expect("add");
    admin.add(&key(b, "agent:two")).expect("add");
    admin.add(&key(c, "agent:two")).expect("add");
    assert!(
        admin.add(&key(a, "agent:again")).is_err(),
        "same hash twice"
    );

    assert_eq!(store.api_key(a).expect("read"), Some(key(a, "agent:one")));
    assert_eq!(store.api_key(&"f".repeat(64)).expect("read"), None);

    // A prefix shared by two keys revokes nothing; a short prefix matches nothing.
    assert!(matches!(
        admin.revoke("aaaaaaaa", 5).expect("revoke"),
        RevokeOutcome::Ambiguous(v) if v.len() == 2
    ));
    assert_eq!(
        admin.revoke("aaaa", 5).expect("revoke"),
        RevokeOutcome::NoMatch
    );
    // By identity: every key of that identity.
    match admin.revoke("agent:two", 5).expect("revoke") {
        RevokeOutcome::Revoked(v) => assert_eq!(v.len(), 2),
        other => panic!("{other:?}"),
    }
    // The gateway's connection sees it at once.
    assert_eq!(
        store.api_key(b).expect("read").and_then(|k| k.revoked),
        Some(5)
    );
    assert_eq!(
        store.api_key(a).expect("read").and_then(|k| k.revoked),
        None
    );
    // By unique prefix; a second revoke reports nothing new.
    assert!(
        matches!(admin.revoke("AAAAAAAA1111", 6).expect("revoke"), RevokeOutcome::Revoked(v) if v.len() == 1)
    );
    assert_eq!(
        admin.revoke("agent:one", 7).expect("revoke"),
        RevokeOutcome::Revoked(vec![])
    );
    assert_eq!(admin.list().expect("list").len(), 3);
}

/// What a gateway killed between journalling and indexing leaves behind: records and a
/// claim in the journal only. Readers see them at once; the next open indexes them.
#[tokio::test]
async fn journalled_records_survive_a_crash_before_indexing() {
    let (dir, path) = store_with(3).await;
    let head = verify(&path).expect("intact");
    assert_eq!(head.records, 3);
    let mut prev = head.head.clone();
    let mut entries = Vec::new();
    for seq in 4..=5u64 {
        let mut r = record(&format!("SELECT {seq} -- after the crash"));
        r.seq = seq;
        let encoded = r.canonical();
        let hash = querygate_core::audit::chain_hash(&prev, &encoded);
        entries.push(journal::Entry::Record {
            seq,
            keys: Some(journal::Keys::of(&r)),
            record: encoded,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
            usage: Some((
                "agent:x".into(),
                "2026-11-27".into(),
                Usage {
                    bytes: 1000,
                    rows: 1,
                },
            )),
        });
    }
    entries.push(journal::Entry::Claim(JobRow {
        source: "s".into(),
        job_id: "crashed_job".into(),
        identity: "agent:x".into(),
        ..JobRow::default()
    }));
    {
        let _lock = journal::Lock::take(&path, Duration::ZERO).expect("lock");
        let mut j = journal::Journal::create(&path, 7, 4096).expect("journal");
        j.append(&entries, true).expect("append");
    }
    // Before any gateway reopens the store, `audit verify` already covers them.
    assert_eq!(verify(&path).expect("intact").records, 5);

    let store = Store::open(&path).expect("reopen");
    assert_eq!(
        store
            .job("s", "crashed_job")
            .expect("read")
            .map(|j| j.identity),
        Some("agent:x".into())
    );
    assert_eq!(
        store.usage("agent:x", "2026-11-27").expect("usage"),
        Usage {
            bytes: 2000,
            rows: 2
        }
    );
    // Indexed from the journal by their identity too (read from each record's text).
    let mut found = Vec::new();
    Reader::open(&path)
        .expect("reader")
        .records(
            &AuditFilter {
                identity: Some("agent:x".into()),
                since: Some("2026-11-27T00:00:00Z".into()),
                ..AuditFilter::default()
            },
            None,
            |r| found.push(r.record.seq),
        )
        .expect("read");
    assert_eq!(found, vec![1, 2, 3, 4, 5]);
    // The chain goes on from the recovered head.
    assert_eq!(store.append(record("SELECT 6")).await.expect("append"), 6);
    drop(store);
    assert_eq!(verify(&path).expect("intact").records, 6);
    assert!(
        journal::files(&path).expect("list").is_empty(),
        "a clean stop leaves no journal behind"
    );
    drop(dir);
}

/// Past a file's size limit the writer moves on to the next journal file; the chain runs on
/// across files, and a clean stop leaves no file behind.
#[tokio::test]
async fn the_journal_moves_on_to_the_next_file_and_a_stop_leaves_none() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let store = Store::open(&path).expect("open");
    let big = "x".repeat(64 * 1024);
    let mut seen = std::collections::BTreeSet::new();
    // ~19 MiB of records: more than two files.
    for i in 1..=300 {
        store
            .append(record(&format!("SELECT '{big}' -- {i}")))
            .await
            .expect("append");
        seen.extend(
            journal::files(&path)
                .expect("list")
                .into_iter()
                .map(|f| f.0),
        );
    }
    assert!(seen.len() >= 3, "journal files seen: {seen:?}");
    drop(store);
    assert_eq!(verify(&path).expect("intact").records, 300);
    assert!(journal::files(&path).expect("list").is_empty());
}

#[tokio::test]
async fn a_second_writer_on_the_same_store_is_refused() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let _first = Store::open(&path).expect("open");
    let err = Store::open_with(&path, Sync::Full).expect_err("the first store holds the lock");
    assert!(
        err.to_string().contains("another querygate process"),
        "{err}"
    );
}

/// A failing disk: the group's append fails, every caller hears it, nothing is acknowledged
/// as durable, and the chain head does not move.
#[tokio::test]
async fn a_failed_journal_write_fails_every_caller_in_the_group() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let store = Store::start(&path, Options::default(), |_, _| {
        journal::Journal::failing(dir.0.join("failing.journal"))
    })
    .expect("open");
    let err = store
        .append(record("SELECT 1"))
        .await
        .expect_err("disk full");
    assert!(err.to_string().contains("write failed"), "{err}");
    let claim = JobRow {
        source: "s".into(),
        job_id: "j".into(),
        identity: "agent:x".into(),
        ..JobRow::default()
    };
    let claimed = store
        .append_with(
            record("SELECT 2"),
            Alongside {
                claim: Some(claim),
                usage: None,
            },
        )
        .await;
    assert!(claimed.is_err());
    assert_eq!(
        store.job("s", "j").expect("read"),
        None,
        "no claim is left behind"
    );
    drop(store);
    assert_eq!(verify(&path).expect("intact").records, 0);
}

#[tokio::test]
async fn a_closed_store_refuses_writes() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let store = Store::open(&path).expect("open");
    store.append(record("SELECT 1")).await.expect("append");
    store.close();
    assert!(matches!(
        store.append(record("SELECT 2")).await,
        Err(StoreError::WriterGone)
    ));
    // The lock is let go: another process (here, another handle) can take over.
    let again = Store::open(&path).expect("reopen");
    assert_eq!(again.append(record("SELECT 3")).await.expect("append"), 2);
}

/// Rewrites rows from `from` on as an attacker with the file would: edits with `edit`,
/// then recomputes every hash after it so that the chain itself verifies again.
fn rechain(path: &Path, from: u64, edit: impl Fn(u64, String) -> String) {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
    )
    .expect("drop triggers");
    let rows: Vec<(i64, String, String)> = conn
        .prepare("SELECT seq, record, prev_hash FROM audit_log ORDER BY seq")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut prev = None;
    for (seq, record, stored_prev) in rows {
        let seq = seq as u64;
        if seq < from {
            prev = Some(
                conn.query_row(
                    "SELECT hash FROM audit_log WHERE seq = ?1",
                    [seq as i64],
                    |r| r.get::<_, String>(0),
                )
                .expect("hash"),
            );
            continue;
        }
        let record = edit(seq, record);
        let prev_hash = prev.clone().unwrap_or(stored_prev);
        let hash = querygate_core::audit::chain_hash(&prev_hash, &record);
        conn.execute(
            "UPDATE audit_log SET record = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
            rusqlite::params![seq as i64, record, prev_hash, hash],
        )
        .expect("update");
        prev = Some(hash);
    }
}

#[tokio::test]
async fn signed_checkpoints_catch_rewrites_forgeries_and_a_cut_tail() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let key = dir.0.join("audit.key");
    let file = dir.0.join("checkpoints.jsonl");
    let signer = signing::Signer::load_or_create(&key).expect("key");
    let public = signer.public_key_hex();
    let store = Store::open_with_options(
        &path,
        Options {
            sync: Sync::Full,
            checkpoints: Some(Checkpoints {
                signer,
                every: 5,
                interval: Duration::from_secs(3600),
                file: Some(file.clone()),
            }),
        },
    )
    .expect("open");
    for i in 1..=12 {
        store
            .append(record(&format!("SELECT {i}")))
            .await
            .expect("append");
    }
    drop(store); // a clean stop signs the last two records too
    let options = VerifyOptions {
        public_key: Some(public.clone()),
        checkpoint_file: Some(file.clone()),
    };
    let check = |options: &VerifyOptions| {
        Reader::open(&path)
            .expect("reader")
            .verify_with(options)
            .expect("read")
    };
    let report = check(&options).expect("intact");
    assert_eq!((report.records, report.checkpoints), (15, 3), "{report:?}");
    assert_eq!(report.unsigned_tail, 0);
    assert_eq!(report.external_checkpoints, 3);
    // The key file is private; its public half is written beside it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        std::fs::read_to_string(signing::public_path(&key))
            .expect("pub")
            .trim(),
        public
    );

    // Another public key: refused, naming the key that signed.
    let other = signing::Signer::load_or_create(&dir.0.join("other.key")).expect("key");
    let wrong = VerifyOptions {
        public_key: Some(other.public_key_hex()),
        checkpoint_file: None,
    };
    assert!(
        check(&wrong)
            .expect_err("wrong key")
            .problem
            .contains("signed with key")
    );

    // A cut tail is a valid chain, but the checkpoint file remembers more.
    let backup = dir.0.join("backup.db");
    std::fs::copy(&path, &backup).expect("copy");
    tamper(&path, "DELETE FROM audit_log WHERE seq > 11");
    let plain = VerifyOptions {
        public_key: Some(public.clone()),
        checkpoint_file: None,
    };
    assert!(
        check(&plain).is_ok(),
        "a prefix of the chain verifies on its own"
    );
    let cut = check(&options).expect_err("cut");
    assert!(cut.problem.contains("cut from the end"), "{cut:?}");
    std::fs::copy(&backup, &path).expect("restore");

    // An edit with the whole tail re-chained: the chain verifies, the next checkpoint not.
    rechain(&path, 3, |seq, r| {
        if seq == 3 {
            r.replace("SELECT 3", "SELECT 333")
        } else {
            r
        }
    });
    let rewritten = check(&plain).expect_err("rewritten");
    assert_eq!(
        rewritten.seq, 6,
        "the first checkpoint after the edit: {rewritten:?}"
    );
    std::fs::copy(&backup, &path).expect("restore");

    // …and making the checkpoint claim the new head breaks its signature.
    rechain(&path, 3, |seq, r| {
        if seq == 3 {
            return r.replace("SELECT 3", "SELECT 333");
        }
        r
    });
    let new_head: String = Connection::open(&path)
        .expect("open")
        .query_row("SELECT hash FROM audit_log WHERE seq = 5", [], |r| r.get(0))
        .expect("head");
    rechain(&path, 6, |seq, r| {
        if seq != 6 {
            return r;
        }
        let mut v: serde_json::Value = serde_json::from_str(&r).expect("json");
        v["checkpoint"]["head"] = serde_json::json!(new_head);
        serde_json::to_string(&v).expect("json")
    });
    let forged = check(&plain).expect_err("forged");
    assert_eq!(forged.seq, 6);
    assert!(
        forged.problem.contains("signature does not verify"),
        "{forged:?}"
    );
}

#[tokio::test]
async fn retention_prunes_old_records_and_the_rest_still_verifies() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let signer = signing::Signer::load_or_create(&dir.0.join("audit.key")).expect("key");
    let public = signer.public_key_hex();
    let store = Store::open_with_options(
        &path,
        Options {
            sync: Sync::Full,
            checkpoints: Some(Checkpoints {
                signer,
                every: 1000,
                interval: Duration::from_secs(3600),
                file: None,
            }),
        },
    )
    .expect("open");
    for i in 1..=10u32 {
        let mut r = record(&format!("SELECT {i}"));
        r.time = if i <= 4 {
            format!("2025-0{i}-01T00:00:00.000000Z")
        } else {
            format!("2026-11-{:02}T00:00:00.000000Z", i + 10)
        };
        store.append(r).await.expect("append");
    }
    let pruned = store
        .prune_before("2026-01-01T00:00:00.000000Z")
        .await
        .expect("prune");
    assert_eq!(
        pruned,
        Some((4, 4)),
        "records 1..=4 are older than the cutoff"
    );
    assert_eq!(
        store
            .prune_before("2026-01-01T00:00:00.000000Z")
            .await
            .expect("prune"),
        None,
        "nothing left to prune"
    );
    drop(store);
    let verify_with = |key: Option<&str>| {
        Reader::open(&path)
            .expect("reader")
            .verify_with(&VerifyOptions {
                public_key: key.map(str::to_string),
                checkpoint_file: None,
            })
            .expect("read")
    };
    let report = verify_with(Some(&public)).expect("intact after pruning");
    assert_eq!(report.pruned_before, Some(5));
    // 6 kept records, the prune marker, and the checkpoint at the clean stop.
    assert_eq!(report.records, 8, "{report:?}");
    // Without the public key nobody can tell a signed marker from a forged one.
    assert!(
        verify_with(None)
            .expect_err("unverifiable")
            .problem
            .contains("--public-key")
    );
    // Deleting more than the marker vouches for is caught.
    tamper(&path, "DELETE FROM audit_log WHERE seq <= 6");
    let cut = verify_with(Some(&public)).expect_err("cut");
    assert!(cut.problem.contains("no signed prune marker"), "{cut:?}");
}

#[tokio::test]
async fn search_filters_by_identity_time_table_rule_ticket_and_text() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("qg.db");
    let store = Store::open(&path).expect("open");
    for i in 0..30u32 {
        let mut r = record(&format!(
            "SELECT * FROM shop.t{} WHERE note = 'Refund {i}'",
            i % 3
        ));
        r.identity = format!("agent:{}", i % 2);
        r.time = format!("2026-11-27T10:00:{i:02}.000000Z");
        r.tables = vec![format!("p.shop.t{}", i % 3)];
        r.rule = Some(if i % 5 == 0 { "big" } else { "read" }.into());
        r.ticket = (i == 7).then(|| "tk_seven".to_string());
        store.append(r).await.expect("append");
    }
    store.flush().await.expect("flush");
    // Two more, journalled but possibly not indexed yet: searches see them too.
    for i in 30..32u32 {
        let mut r = record(&format!("SELECT {i}"));
        r.identity = "agent:0".into();
        r.time = format!("2026-11-27T10:00:{i:02}.000000Z");
        store.append(r).await.expect("append");
    }
    let reader = Reader::open(&path).expect("reader");
    let find = |f: AuditFilter, last: Option<usize>| {
        let mut seqs = Vec::new();
        reader
            .records(&f, last, |r| seqs.push(r.record.seq))
            .expect("search");
        seqs
    };
    let by = |f: fn(&mut AuditFilter)| {
        let mut filter = AuditFilter::default();
        f(&mut filter);
        filter
    };
    assert_eq!(find(AuditFilter::default(), None).len(), 32);
    assert_eq!(find(AuditFilter::default(), Some(3)), vec![30, 31, 32]);
    assert_eq!(
        find(by(|f| f.identity = Some("agent:1".into())), None).len(),
        15
    );
    assert_eq!(
        find(
            by(|f| {
                f.identity = Some("agent:0".into());
                f.since = Some("2026-11-27T10:00:25.000000Z".into());
            }),
            None
        ),
        vec![27, 29, 31, 32]
    );
    assert_eq!(
        find(by(|f| f.table = Some("p.shop.t2".into())), None),
        vec![3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    );
    assert_eq!(find(by(|f| f.rule = Some("big".into())), None).len(), 6);
    assert_eq!(
        find(by(|f| f.ticket = Some("tk_seven".into())), None),
        vec![8]
    );
    assert_eq!(
        find(by(|f| f.text = Some("refund 1".into())), None).len(),
        11
    );
    assert_eq!(
        find(by(|f| f.text = Some("refund 1".into())), Some(2)),
        vec![19, 20]
    );
}

#[test]
fn points_in_time_read_as_the_audit_log_writes_them() {
    let now = time::macros::datetime!(2026-11-27 10:00:00 UTC);
    let at = |text: &str| point_in_time(text, now);
    assert_eq!(at("90s"), Ok("2026-11-27T09:58:30.000000Z".into()));
    assert_eq!(at("15m"), Ok("2026-11-27T09:45:00.000000Z".into()));
    assert_eq!(at("1h"), Ok("2026-11-27T09:00:00.000000Z".into()));
    assert_eq!(at("7d"), Ok("2026-11-20T10:00:00.000000Z".into()));
    assert_eq!(
        at("2026-11-27T12:00:00+02:00"),
        Ok("2026-11-27T10:00:00.000000Z".into())
    );
    for bad in [
        "",
        "h",
        "7",
        "7w",
        "-1h",
        "yesterday",
        "99999999999999999999d",
    ] {
        let e = at(bad).expect_err(bad).to_string();
        assert!(e.contains("is not a time") && e.contains("RFC 3339"), "{e}");
    }
    // Too far back for a date: an error, not a panic (this reads the admin API's `since`).
    for bad in [
        "99999999999999999d",
        "9223372036854775807s",
        "999999999999h",
    ] {
        let e = at(bad).expect_err(bad).to_string();
        assert!(
            e.contains("is too far back") && e.contains("RFC 3339"),
            "{e}"
        );
    }
}
