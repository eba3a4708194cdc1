//! Captured stdout/stderr with hard caps.
//!
//! stdout is part of the result: the first write past its cap stops the spell with a trap
//! (`output_too_large`). stderr is diagnostics: past its cap the rest is silently dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The most we allow in one `check_write` permit: the host allocates up to this much for some
/// stream operations, so it stays small (the WASI convention is ~64 KiB).
const PERMIT_BYTES_MAX: usize = 64 * 1024;

/// The error a capped stdout traps with; the runner recognises it to report
/// `output_too_large`.
#[derive(Debug, thiserror::Error)]
#[error("spell output exceeded its {cap} byte cap")]
pub struct OutputLimitExceeded {
    pub cap: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnOverflow {
    Trap,
    Truncate,
}

#[derive(Clone)]
pub struct CappedPipe {
    cap: usize,
    on_overflow: OnOverflow,
    buffer: Arc<Mutex<Vec<u8>>>,
    overflowed: Arc<AtomicBool>,
    /// Bytes the spell handed to this pipe, kept or not: the host's work, which it is charged
    /// for (shared with the run's other host I/O counters).
    moved: Arc<AtomicU64>,
}

impl CappedPipe {
    pub fn new(cap: usize, on_overflow: OnOverflow, moved: Arc<AtomicU64>) -> Self {
        CappedPipe {
            cap,
            on_overflow,
            buffer: Arc::new(Mutex::new(Vec::new())),
            overflowed: Arc::new(AtomicBool::new(false)),
            moved,
        }
    }

    fn count(&self, bytes: usize) {
        self.moved
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether a write went past the cap (only tracked for [`OnOverflow::Trap`]).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// What was written so far.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.count(bytes.len());
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(buffer.len());
        if bytes.len() <= room {
            buffer.extend_from_slice(&bytes);
            return Ok(());
        }
        match self.on_overflow {
            OnOverflow::Trap => {
                self.overflowed.store(true, Ordering::Relaxed);
                Err(StreamError::Trap(
                    OutputLimitExceeded { cap: self.cap }.into(),
                ))
            }
            OnOverflow::Truncate => {
                buffer.extend_from_slice(&bytes[..room]);
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let used = self.buffer.lock().unwrap_or_else(|p| p.into_inner()).len();
        let permit = match self.on_overflow {
            // One byte more than the room left, so the write that crosses the cap reaches
            // `write` and traps there instead of blocking forever on a zero permit.
            OnOverflow::Trap => self.cap.saturating_sub(used).saturating_add(1),
            OnOverflow::Truncate => PERMIT_BYTES_MAX,
        };
        Ok(permit.clamp(1, PERMIT_BYTES_MAX))
    }
}

#[async_trait::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.count(buf.len());
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(buffer.len());
        if buf.len() > room && self.on_overflow == OnOverflow::Trap {
            self.overflowed.store(true, Ordering::Relaxed);
            return std::task::Poll::Ready(Err(std::io::Error::other(OutputLimitExceeded {
                cap: self.cap,
            })));
        }
        let taken = buf.len().min(room);
        buffer.extend_from_slice(&buf[..taken]);
        // Report everything as written: truncation is silent by design.
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
