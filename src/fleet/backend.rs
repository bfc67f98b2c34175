//! `--store redis`: [`RedisBackend`], the store's [`Backend`] on the fleet's Redis, and the
//! fleet's shared signing secret ([`shared_secret`]).
//!
//! It runs on the store's writer thread with a blocking connection of its own (the async
//! connection manager is for the request path). A batch is one `MULTI` ... `EXEC`:
//! documents are `HSET`/`HDEL` in `p:doc:{kind}`, a deleted stream's counters are `DEL`eted,
//! increments are `HINCRBY` on `p:counters:{id}` (through a short Lua script that drops
//! them when the stream's document is gone, as SQLite's `WHERE EXISTS` does) and on
//! `p:totals`, and every document change is announced on `p:changes` in the same
//! transaction, so no instance hears of a change before it is readable.
//!
//! A failed batch (Redis down, a timeout) is kept by the store and retried with the next
//! one; the connection is opened again on that next attempt. An `EXEC` whose reply is
//! lost after Redis ran it would be applied twice when retried: its increments counted
//! twice. That needs the connection to drop in the microseconds between the two.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{key, COMMAND_TIMEOUT};
use crate::store::{Backend, Batch, CounterKey, CounterSet, Kind, Loaded, StoreError};

/// Adds increments to a stream's counters only while its document exists.
/// KEYS: the stream documents, the stream's counters; ARGV: id, bytes, segments, errors,
/// failovers.
const ADD_IF_STREAM: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local names = {'bytes', 'segments', 'errors', 'failovers'}
for i, name in ipairs(names) do
  local n = tonumber(ARGV[i + 1])
  if n ~= 0 then redis.call('HINCRBY', KEYS[2], name, n) end
end
return 1
";

/// Stream ids whose counters one load reads per round trip.
const LOAD_CHUNK: usize = 1_000;

/// The names of the four counters in a `p:counters:{id}` or `p:totals` hash.
const COUNTER_FIELDS: [&str; 4] = ["bytes", "segments", "errors", "failovers"];

/// A document change as announced on `p:changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The instance that wrote it (an instance ignores its own).
    pub instance: String,
    pub kind: Kind,
    pub id: String,
    pub op: ChangeOp,
}

/// What happened to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Put,
    Delete,
}

/// `p:doc:{kind}`.
pub fn doc_key(prefix: &str, kind: Kind) -> String {
    key(prefix, &format!("doc:{}", kind.as_str()))
}

/// `p:counters:{id}`.
pub fn counters_key(prefix: &str, id: &str) -> String {
    key(prefix, &format!("counters:{id}"))
}

/// The four numbers of a counters hash (missing or unreadable fields are zero).
pub fn counter_set(hash: &HashMap<String, String>) -> CounterSet {
    let n = |name: &str| {
        hash.get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |v| v.max(0) as u64)
    };
    CounterSet::from_array(COUNTER_FIELDS.map(n))
}

/// The store's backend on Redis; see the module doc.
pub struct RedisBackend {
    client: redis::Client,
    prefix: String,
    instance: String,
    location: String,
    /// `None` after a failure: the next batch connects again.
    conn: Option<redis::Connection>,
}

impl RedisBackend {
    /// A backend writing under `prefix`, announcing its changes as `instance`. Connects
    /// when first used.
    pub fn new(client: redis::Client, prefix: &str, instance: &str, location: &str) -> Self {
        RedisBackend {
            client,
            prefix: prefix.to_string(),
            instance: instance.to_string(),
            location: location.to_string(),
            conn: None,
        }
    }

    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.conn.is_none() {
            self.conn = Some(connect_blocking(&self.client)?);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Runs `f` on the connection; a failure drops the connection, so the next call
    /// opens a fresh one.
    fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection, &str) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let prefix = self.prefix.clone();
        let result = self.connection().and_then(|conn| f(conn, &prefix));
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn load_all(conn: &mut redis::Connection, prefix: &str) -> redis::RedisResult<Loaded> {
        let mut loaded = Loaded::default();
        for kind in Kind::ALL {
            let hash: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(doc_key(prefix, kind))
                .query(conn)?;
            let mut docs: Vec<(String, serde_json::Value)> = hash
                .into_iter()
                .filter_map(|(id, body)| match serde_json::from_str(&body) {
                    Ok(doc) => Some((id, doc)),
                    Err(e) => {
                        tracing::warn!(kind = kind.as_str(), id = %id, error = %e, "unreadable stored document ignored");
                        None
                    }
                })
                .collect();
            docs.sort_by(|a, b| a.0.cmp(&b.0));
            if !docs.is_empty() {
                loaded.docs.insert(kind, docs);
            }
        }
        // Every stream's counters: those of stored streams and those of channel-list
        // streams, which have no document of their own (`CounterKey::Listed`).
        let pattern = counters_key(prefix, "*");
        let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(conn)?;
        let start = pattern.len() - 1;
        for chunk in keys.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("HGETALL").arg(k);
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query(conn)?;
            for (k, hash) in chunk.iter().zip(hashes) {
                let set = counter_set(&hash);
                if !set.is_zero() {
                    loaded.stream_counters.insert(k[start..].to_string(), set);
                }
            }
        }
        let totals: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(key(prefix, "totals"))
            .query(conn)?;
        loaded.totals = counter_set(&totals);
        Ok(loaded)
    }

    fn apply_batch(
        conn: &mut redis::Connection,
        prefix: &str,
        instance: &str,
        batch: &Batch,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let changes = key(prefix, "changes");
        for ((kind, id), doc) in &batch.docs {
            let op = match doc {
                Some(doc) => {
                    pipe.cmd("HSET")
                        .arg(doc_key(prefix, *kind))
                        .arg(id)
                        .arg(doc.to_string())
                        .ignore();
                    ChangeOp::Put
                }
                None => {
                    pipe.cmd("HDEL")
                        .arg(doc_key(prefix, *kind))
                        .arg(id)
                        .ignore();
                    if *kind == Kind::Stream {
                        pipe.cmd("DEL").arg(counters_key(prefix, id)).ignore();
                    }
                    ChangeOp::Delete
                }
            };
            let change = Change {
                instance: instance.to_string(),
                kind: *kind,
                id: id.clone(),
                op,
            };
            let message = serde_json::to_string(&change).unwrap_or_default();
            pipe.cmd("PUBLISH").arg(&changes).arg(message).ignore();
        }
        for (counter, delta) in &batch.counters {
            let values = delta.to_array().map(redis_int);
            match counter {
                CounterKey::Totals => {
                    let totals = key(prefix, "totals");
                    for (name, n) in COUNTER_FIELDS.iter().zip(values) {
                        if n != 0 {
                            pipe.cmd("HINCRBY").arg(&totals).arg(*name).arg(n).ignore();
                        }
                    }
                }
                // A channel-list stream has no document: its counters are kept as they are.
                CounterKey::Listed(id) => {
                    let counters = counters_key(prefix, id);
                    for (name, n) in COUNTER_FIELDS.iter().zip(values) {
                        if n != 0 {
                            pipe.cmd("HINCRBY")
                                .arg(&counters)
                                .arg(*name)
                                .arg(n)
                                .ignore();
                        }
                    }
                }
                CounterKey::Stream(id) => {
                    pipe.cmd("EVAL")
                        .arg(ADD_IF_STREAM)
                        .arg(2)
                        .arg(doc_key(prefix, Kind::Stream))
                        .arg(counters_key(prefix, id))
                        .arg(id)
                        .arg(&values[..])
                        .ignore();
                }
            }
        }
        pipe.query::<()>(conn)
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn location(&self) -> Option<String> {
        Some(self.location.clone())
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let location = self.location.clone();
        self.with_conn(Self::load_all)
            .map_err(|e| StoreError::Open {
                path: location,
                detail: e.to_string(),
            })
    }

    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            // The periodic flush with nothing to write: a PING, so the store's health says
            // whether Redis answers.
            return self
                .with_conn(|conn, _| redis::cmd("PING").query::<()>(conn))
                .map_err(|e| StoreError::Write(format!("redis: {e}")));
        }
        let instance = self.instance.clone();
        self.with_conn(|conn, prefix| Self::apply_batch(conn, prefix, &instance, batch))
            .map_err(|e| StoreError::Write(format!("redis: {e}")))
    }
}

/// A blocking connection whose every command gives up after [`COMMAND_TIMEOUT`].
pub fn connect_blocking(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(COMMAND_TIMEOUT)?;
    conn.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    conn.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(conn)
}

/// The fleet's signing secret: `p:secret`, set to 32 random bytes (hex) by the first
/// instance that finds it missing (`SET NX`), then read back, so every instance signs
/// with the same one. An instance given `M3U_PROXY_SECRET` does not call this.
pub fn shared_secret(client: &redis::Client, prefix: &str) -> redis::RedisResult<Vec<u8>> {
    let mut conn = connect_blocking(client)?;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret_key = key(prefix, "secret");
    let _: Option<String> = redis::cmd("SET")
        .arg(&secret_key)
        .arg(&fresh)
        .arg("NX")
        .query(&mut conn)?;
    let secret: String = redis::cmd("GET").arg(&secret_key).query(&mut conn)?;
    Ok(secret.into_bytes())
}

/// Redis integers are signed; counters never get near 2^63.
fn redis_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_hashes_read_as_counter_sets() {
        let hash: HashMap<String, String> = [
            ("bytes", "10"),
            ("segments", "2"),
            ("errors", "-1"),
            ("other", "7"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(counter_set(&hash), CounterSet::from_array([10, 2, 0, 0]));
    }

    #[test]
    fn changes_read_as_the_agreed_json() {
        let change = Change {
            instance: "a".into(),
            kind: Kind::ChannelList,
            id: "x".into(),
            op: ChangeOp::Delete,
        };
        assert_eq!(
            serde_json::to_string(&change).unwrap(),
            r#"{"instance":"a","kind":"channel_list","id":"x","op":"delete"}"#
        );
    }
}
