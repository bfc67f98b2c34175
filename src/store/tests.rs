use super::*;

fn temp(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("m3u-store-unit-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn set(bytes: u64) -> CounterSet {
    CounterSet {
        bytes,
        segments: 1,
        errors: 0,
        failovers: 0,
    }
}

#[test]
fn later_changes_replace_documents_and_increments_add_up() {
    let mut a = Batch::default();
    a.put(Kind::Stream, "s", serde_json::json!(1));
    a.add(CounterKey::Stream("s".into()), set(10));
    a.add(CounterKey::Totals, set(10));
    let mut b = Batch::default();
    b.put(Kind::Stream, "s", serde_json::json!(2));
    b.add(CounterKey::Totals, set(5));
    a.merge(b);
    assert_eq!(
        a.docs[&(Kind::Stream, "s".into())],
        Some(serde_json::json!(2))
    );
    assert_eq!(a.counters[&CounterKey::Totals].bytes, 15);
    let mut c = Batch::default();
    c.delete(Kind::Stream, "s");
    a.merge(c);
    assert_eq!(a.docs[&(Kind::Stream, "s".into())], None);
    assert!(!a.counters.contains_key(&CounterKey::Stream("s".into())));
}

#[test]
fn sqlite_keeps_documents_and_counters_and_drops_increments_of_deleted_streams() {
    let dir = temp("roundtrip");
    let mut db = SqliteBackend::open(&dir).unwrap();
    let mut batch = Batch::default();
    batch.put(Kind::Stream, "a", serde_json::json!({"x": 1}));
    batch.put(Kind::Webhook, "w", serde_json::json!({"url": "http://h/"}));
    batch.add(CounterKey::Stream("a".into()), set(100));
    batch.add(CounterKey::Stream("gone".into()), set(7));
    batch.add(CounterKey::Totals, set(107));
    db.apply(&batch).unwrap();
    let mut more = Batch::default();
    more.add(CounterKey::Stream("a".into()), set(1));
    db.apply(&more).unwrap();
    drop(db);
    let loaded = SqliteBackend::open(&dir).unwrap().load().unwrap();
    assert_eq!(
        loaded.of(Kind::Stream),
        &[("a".to_string(), serde_json::json!({"x": 1}))]
    );
    assert_eq!(loaded.of(Kind::Webhook).len(), 1);
    assert_eq!(loaded.stream_counters["a"].bytes, 101);
    assert_eq!(loaded.stream_counters["a"].segments, 2);
    assert!(
        !loaded.stream_counters.contains_key("gone"),
        "no document, no counters"
    );
    assert_eq!(loaded.totals.bytes, 107);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn the_database_and_its_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("modes");
    let (store, _) = Store::open(StoreBackend::Sqlite, Some(&dir)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
    assert_eq!(mode(&dir), 0o700);
    store.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_failed_commit_is_kept_and_written_with_the_next_one() {
    let dir = temp("kept");
    let (store, _) = Store::open(StoreBackend::Sqlite, Some(&dir)).unwrap();
    store
        .put(Kind::Stream, "a", &serde_json::json!(1))
        .await
        .unwrap();
    store.inject_failure(Some("No space left on device"));
    let err = store.put(Kind::Stream, "b", &serde_json::json!(2)).await;
    assert!(matches!(err, Err(StoreError::Write(_))), "{err:?}");
    assert!(!store.health().ok);
    assert_eq!(store.flush_failures(), 1);
    store.inject_failure(None);
    store.delete(Kind::Stream, "a").await.unwrap();
    assert!(store.health().ok);
    store.close();
    let loaded = SqliteBackend::open(&dir).unwrap().load().unwrap();
    assert_eq!(
        loaded.of(Kind::Stream),
        &[("b".to_string(), serde_json::json!(2))]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
