//! Device global memory: live allocations at distinct addresses, every access checked
//! against them. A fault names the nearest allocation, which is usually the one an index
//! overran.

use std::collections::BTreeMap;

use crate::error::{EmuError, Result};

/// Addresses start high and allocations are 256-byte aligned with a gap between them, so
/// an overrun of one buffer never lands silently in the next.
const BASE: u64 = 0x7f00_0000_0000;
const ALIGN: u64 = 256;
const GAP: u64 = 256;

#[derive(Debug, Default)]
pub struct GlobalMemory {
    allocs: BTreeMap<u64, Vec<u8>>,
    next: u64,
    /// Bytes currently allocated and the limit the device reports as its memory.
    pub used: u64,
    pub capacity: u64,
    peak: u64,
}

impl GlobalMemory {
    pub fn new(capacity: u64) -> Self {
        GlobalMemory {
            allocs: BTreeMap::new(),
            next: BASE,
            used: 0,
            capacity,
            peak: 0,
        }
    }

    pub fn alloc(&mut self, bytes: usize) -> Result<u64> {
        if self.used.saturating_add(bytes as u64) > self.capacity {
            return Err(EmuError::Memory(format!(
                "out of memory: {bytes} bytes requested, {} of {} in use",
                self.used, self.capacity
            )));
        }
        let at = self.next;
        self.next = (at + bytes.max(1) as u64 + GAP).div_ceil(ALIGN) * ALIGN;
        self.allocs.insert(at, vec![0; bytes]);
        self.used += bytes as u64;
        self.peak = self.peak.max(self.used);
        Ok(at)
    }

    pub fn free(&mut self, addr: u64) -> Result<()> {
        match self.allocs.remove(&addr) {
            Some(v) => {
                self.used -= v.len() as u64;
                Ok(())
            }
            None => Err(EmuError::Memory(format!(
                "free of {addr:#x}, which is not the start of a live allocation"
            ))),
        }
    }

    /// The allocation holding `[addr, addr+len)`, or a message naming the nearest one.
    fn locate(&self, addr: u64, len: usize) -> std::result::Result<(u64, usize), String> {
        if let Some((&start, buf)) = self.allocs.range(..=addr).next_back() {
            let off = (addr - start) as usize;
            if off.checked_add(len).is_some_and(|end| end <= buf.len()) {
                return Ok((start, off));
            }
        }
        Err(self.describe_miss(addr, len))
    }

    fn describe_miss(&self, addr: u64, len: usize) -> String {
        let below = self.allocs.range(..=addr).next_back().map(|(&s, b)| {
            let end = s + b.len() as u64;
            let what = if addr >= end {
                format!("{} bytes past the end of", addr - end)
            } else {
                format!("{} bytes into, running past the end of", addr - s)
            };
            (
                addr.saturating_sub(end),
                format!("{what} the {}-byte allocation at {s:#x}", b.len()),
            )
        });
        let above = self
            .allocs
            .range(addr.saturating_add(1)..)
            .next()
            .map(|(&a, b)| {
                (
                    a - addr,
                    format!(
                        "{} bytes before the {}-byte allocation at {a:#x}",
                        a - addr,
                        b.len()
                    ),
                )
            });
        let near = match (below, above) {
            (Some(b), Some(a)) => {
                if b.0 <= a.0 {
                    b.1
                } else {
                    a.1
                }
            }
            (Some(b), None) => b.1,
            (None, Some(a)) => a.1,
            (None, None) => "no allocation is live".to_string(),
        };
        format!("{len}-byte access at {addr:#x} is outside every live allocation: {near}")
    }

    /// Whether `[addr, addr+len)` lies in one live allocation, or a message naming the nearest.
    pub fn check(&self, addr: u64, len: usize) -> std::result::Result<(), String> {
        self.locate(addr, len).map(|_| ())
    }

    /// The bytes `[addr, addr+len)` in place: for library routines (the emulated cuBLAS)
    /// that read large operands without copying them.
    pub fn bytes(&self, addr: u64, len: usize) -> std::result::Result<&[u8], String> {
        let (start, off) = self.locate(addr, len)?;
        Ok(&self.allocs[&start][off..off + len])
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> std::result::Result<(), String> {
        let (start, off) = self.locate(addr, out.len())?;
        out.copy_from_slice(&self.allocs[&start][off..off + out.len()]);
        Ok(())
    }

    pub fn fill(&mut self, addr: u64, len: usize, value: u8) -> std::result::Result<(), String> {
        let (start, off) = self.locate(addr, len)?;
        let buf = self.allocs.get_mut(&start).ok_or("allocation vanished")?;
        buf[off..off + len].fill(value);
        Ok(())
    }

    /// The most bytes allocated at once since the last reset (`cuMemPoolGetAttribute`).
    pub fn peak(&self) -> u64 {
        self.peak
    }

    pub fn reset_peak(&mut self) {
        self.peak = self.used;
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> std::result::Result<(), String> {
        let (start, off) = self.locate(addr, data.len())?;
        let buf = self.allocs.get_mut(&start).ok_or("allocation vanished")?;
        buf[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}
