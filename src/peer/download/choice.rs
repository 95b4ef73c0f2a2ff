//! Choosing among many sharers: asking each how busy it is.

use std::io;
use std::net::SocketAddr;
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, bail};

use super::{DownloadConfig, STATUS_TIMEOUT};
use crate::net::{self, ConnectTimeouts, Timed, is_timeout};
use crate::text::escape;
use crate::wire::{self, FileReply, FileRequest, PeerHit, Service};

/// Asks every candidate how busy it is, in parallel. Returns those that answered,
/// least loaded first (the order of `hits`, already random, breaks ties), each with
/// its answer, and those that did not, with why.
#[allow(clippy::type_complexity)]
pub(super) fn rank(
    hits: Vec<PeerHit>,
    config: &DownloadConfig,
) -> (Vec<(PeerHit, (u32, u64))>, Vec<(PeerHit, anyhow::Error)>) {
    let answers: Vec<anyhow::Result<Load>> = thread::scope(|scope| {
        let asks: Vec<_> = hits.iter().map(|hit| scope.spawn(|| status(hit.addr, config))).collect();
        asks.into_iter().map(|a| a.join().expect("asking does not panic")).collect()
    });
    let (mut ranked, mut dead) = (Vec::new(), Vec::new());
    for (hit, answer) in hits.into_iter().zip(answers) {
        match answer {
            Ok(load) => ranked.push((hit, load)),
            Err(e) => dead.push((hit, anyhow!("{e:#} (when asked how busy it is)"))),
        }
    }
    // Fewest uploads first; among equals, the one that has been sending fastest.
    ranked.sort_by_key(|(_, (uploads, rate))| (*uploads, std::cmp::Reverse(*rate)));
    (ranked, dead)
}

/// One peer's answer to "how busy are you?": (uploads running, recent bytes per second).
type Load = (u32, u64);

/// Asks one peer how busy it is.
pub(super) fn status(addr: SocketAddr, config: &DownloadConfig) -> anyhow::Result<Load> {
    let timeouts =
        ConnectTimeouts { connect: STATUS_TIMEOUT.min(config.connect_timeout), io: STATUS_TIMEOUT };
    let answer = net::connect(addr, Service::Files, timeouts).and_then(|stream| {
        wire::send_msg(&mut &stream, &FileRequest::Status)?;
        wire::recv_msg(&mut Timed::deadline(&stream, Instant::now() + STATUS_TIMEOUT))
    });
    let answer = answer.map_err(|e| match e.kind() {
        _ if is_timeout(&e) => anyhow!("the peer sent nothing for {:.1} s", STATUS_TIMEOUT.as_secs_f64()),
        io::ErrorKind::ConnectionRefused => anyhow!(e).context("cannot connect"),
        _ => anyhow!(e),
    })?;
    match answer {
        FileReply::Status { uploads, bytes_per_sec } => Ok((uploads, bytes_per_sec)),
        FileReply::Error(e) => bail!("the peer refused: {}", escape(&e)),
        _ => bail!("the peer answered something else"),
    }
}
