//! A player's connection to a live TS stream through the proxy, read packet by packet,
//! with the packet numbers of [`Origin::live_ts`](super::origin::Origin::live_ts) checked
//! for boundaries, gaps and switches.

use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::StatusCode;

use super::origin::{ts_packet_number, TS_PACKET};
use super::Proxy;

/// One player connection to a live TS stream, read packet by packet.
pub struct TsViewer {
    pub body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    pub bytes: Vec<u8>,
    /// When each packet arrived, by packet index.
    pub arrived: Vec<Instant>,
}

impl TsViewer {
    pub async fn open(proxy: &Proxy, endpoint: &str) -> TsViewer {
        TsViewer::from_response(proxy.get(endpoint).await)
    }

    /// Reads `res`, which must be a 200 of TS.
    pub fn from_response(res: reqwest::Response) -> TsViewer {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "video/mp2t");
        TsViewer {
            body: res.bytes_stream().boxed(),
            bytes: Vec::new(),
            arrived: Vec::new(),
        }
    }

    /// Reads until `count` whole packets in total have arrived, or panics after `within`.
    pub async fn read_packets(&mut self, count: usize, within: Duration) {
        tokio::time::timeout(within, async {
            while self.bytes.len() < count * TS_PACKET {
                let chunk = self
                    .body
                    .next()
                    .await
                    .expect("the connection stays open")
                    .expect("no error on the player's connection");
                self.bytes.extend_from_slice(&chunk);
                let now = Instant::now();
                self.arrived.resize(self.bytes.len() / TS_PACKET, now);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{count} packets within {within:?}"));
    }

    /// Reads to the end of the connection, keeping the bytes, and panics unless it ends
    /// within `within` with an error: a cut, never an end that looks like the stream's.
    pub async fn read_until_cut(&mut self, within: Duration) {
        let cut = tokio::time::timeout(within, async {
            loop {
                match self.body.next().await {
                    Some(Ok(chunk)) => self.bytes.extend_from_slice(&chunk),
                    Some(Err(_)) => return true,
                    None => return false,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the connection still open after {within:?}"));
        assert!(
            cut,
            "cut with an error, not ended as if the stream were complete"
        );
    }

    /// Reads until the numbering jumps (the upstream switched), then `then` packets more,
    /// or panics after `within`. Packets already on their way from the old upstream are
    /// read first however late this reader is, so "N packets more" would not be enough.
    pub async fn read_past_switch(&mut self, then: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let cuts = self.discontinuities().len();
        while self.discontinuities().len() == cuts {
            let left = deadline.saturating_duration_since(Instant::now());
            self.read_packets(self.numbers().len() + 1, left).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.read_packets(self.numbers().len() + then, left).await;
    }

    /// The packet numbers received; panics unless every byte belongs to a whole packet.
    pub fn numbers(&self) -> Vec<u64> {
        let whole = self.bytes.len() / TS_PACKET * TS_PACKET;
        self.bytes[..whole]
            .chunks_exact(TS_PACKET)
            .enumerate()
            .map(|(i, p)| {
                ts_packet_number(p)
                    .unwrap_or_else(|| panic!("packet {i} is not a whole TS packet: {p:02x?}"))
            })
            .collect()
    }

    /// Indices where the numbering is not continuous: one per upstream switch.
    pub fn discontinuities(&self) -> Vec<usize> {
        let n = self.numbers();
        (1..n.len()).filter(|&i| n[i] != n[i - 1] + 1).collect()
    }

    /// Packets in the run after the last discontinuity.
    pub fn last_run(&self) -> usize {
        let total = self.numbers().len();
        total - self.discontinuities().last().copied().unwrap_or(0)
    }
}
