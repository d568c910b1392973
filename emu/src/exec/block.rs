//! One thread block: run every thread to its next collective instruction, then release
//! whatever can be released (a barrier the whole block reached, a warp collective all its
//! lanes reached), until every thread has exited. If nothing can be released, that is a
//! deadlock on hardware too, and the report says where each thread stopped.

use super::thread::{BlockEnv, State, Thread};
use super::warp;
use crate::error::EmuError;
use crate::ptx::instr::Op;

fn fault(env: &BlockEnv, t: &Thread, msg: String) -> EmuError {
    let line = env.kernel.instrs.get(t.pc).map_or(0, |i| i.line);
    EmuError::Fault {
        kernel: env.kernel.name.clone(),
        block: env.ctaid,
        thread: t.tid,
        line,
        msg,
    }
}

pub fn run_block(env: &mut BlockEnv) -> Result<u64, EmuError> {
    let [nx, ny, nz] = env.ntid;
    let mut threads: Vec<Thread> = Vec::with_capacity((nx * ny * nz) as usize);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let linear = x + nx * (y + ny * z);
                threads.push(Thread::new(
                    [x, y, z],
                    linear,
                    env.kernel,
                    env.trace.is_some(),
                ));
            }
        }
    }
    loop {
        for t in threads.iter_mut().filter(|t| t.state == State::Ready) {
            if let Err(msg) = t.run(env) {
                return Err(fault(env, t, msg));
            }
        }
        if threads.iter().all(|t| t.state == State::Exited) {
            return Ok(threads.iter().map(|t| t.executed).sum());
        }
        if !release(&mut threads, env)? {
            return Err(deadlock(&threads, env));
        }
    }
}

fn op_at<'k>(env: &BlockEnv<'k>, t: &Thread) -> &'k Op {
    &env.kernel.instrs[t.pc].op
}

/// Lets through one barrier or any warp collectives that are complete. False if none is.
fn release(threads: &mut [Thread], env: &mut BlockEnv) -> Result<bool, EmuError> {
    let waiting = |t: &Thread| t.state == State::Waiting;
    let at_bar = threads
        .iter()
        .filter(|t| waiting(t) && matches!(op_at(env, t), Op::BarSync { .. }))
        .count();
    let live = threads.iter().filter(|t| t.state != State::Exited).count();
    if at_bar > 0 && at_bar == live {
        if let Some(t) = threads.iter().find(|t| t.state == State::Exited) {
            let waiter = threads.iter().find(|t| waiting(t)).expect("at_bar > 0");
            return Err(fault(
                env,
                waiter,
                format!(
                    "bar.sync reached while thread {:?} of the block has exited: on hardware this \
                     is undefined (the barrier may hang or pass early)",
                    t.tid
                ),
            ));
        }
        let id_of = |t: &Thread| match op_at(env, t) {
            Op::BarSync { id } => t.get(env, id),
            _ => unreachable!("counted at a bar.sync"),
        };
        let waiting_ids: Vec<(u64, [u32; 3])> = threads
            .iter()
            .filter(|t| waiting(t))
            .map(|t| (id_of(t), t.tid))
            .collect();
        if let Some(&(other, tid)) = waiting_ids.iter().find(|(id, _)| *id != waiting_ids[0].0) {
            return Err(EmuError::Deadlock {
                kernel: env.kernel.name.clone(),
                block: env.ctaid,
                msg: format!(
                    "thread {:?} waits at bar.sync {} and thread {tid:?} at bar.sync {other}: neither barrier can complete",
                    waiting_ids[0].1, waiting_ids[0].0
                ),
            });
        }
        env.shared.epoch += 1;
        for t in threads.iter_mut().filter(|t| t.state == State::Waiting) {
            t.executed += 1;
            t.pc += 1;
            t.state = State::Ready;
        }
        return Ok(true);
    }
    let mut released = false;
    let warps = threads.len().div_ceil(32);
    for w in 0..warps {
        let mut lanes = [None; 32];
        for (l, slot) in lanes.iter_mut().enumerate() {
            if w * 32 + l < threads.len() {
                *slot = Some(w * 32 + l);
            }
        }
        released |= release_warp(threads, env, &lanes)?;
    }
    Ok(released)
}

fn release_warp(
    threads: &mut [Thread],
    env: &mut BlockEnv,
    lanes: &[Option<usize>; 32],
) -> Result<bool, EmuError> {
    let present: Vec<usize> = lanes.iter().flatten().copied().collect();
    let waiting_at = |t: &Thread, env: &BlockEnv| {
        t.state == State::Waiting && !matches!(op_at(env, t), Op::BarSync { .. })
    };
    // The tensor-core instructions are .aligned: the whole warp executes the same one. If it
    // is not all there yet, other lanes may still be completing shuffles below.
    'aligned: {
        if let Some(&first) = present.iter().find(|&&i| waiting_at(&threads[i], env)) {
            let op = op_at(env, &threads[first]);
            if matches!(op, Op::Mma { .. } | Op::Ldmatrix { .. }) {
                if present.len() != 32 {
                    return Err(fault(
                        env,
                        &threads[first],
                        "mma/ldmatrix in a warp with fewer than 32 threads".into(),
                    ));
                }
                let pc = threads[first].pc;
                let all_here = present
                    .iter()
                    .all(|&i| threads[i].state == State::Waiting && threads[i].pc == pc);
                if !all_here {
                    if let Some(&i) = present.iter().find(|&&i| threads[i].state == State::Exited) {
                        return Err(fault(
                            env,
                            &threads[first],
                            format!(
                                "a .aligned warp instruction is waiting for thread {:?}, which has exited",
                                threads[i].tid
                            ),
                        ));
                    }
                    break 'aligned;
                }
                let full: [usize; 32] = present.clone().try_into().expect("32 lanes");
                if matches!(op, Op::Mma { .. }) {
                    warp::mma(threads, env, &full);
                } else {
                    warp::ldmatrix(threads, env, &full)
                        .map_err(|(ti, m)| fault(env, &threads[ti], m))?;
                }
                for &i in &present {
                    threads[i].executed += 1;
                    threads[i].pc += 1;
                    threads[i].state = State::Ready;
                }
                return Ok(true);
            }
        }
    }
    // Shuffles: the lanes named by a membermask meet at any shfl.sync with that mask.
    let mut released = false;
    let mut done = 0u32;
    for l in 0..32 {
        let Some(ti) = lanes[l] else { continue };
        if done & (1 << l) != 0 || !waiting_at(&threads[ti], env) {
            continue;
        }
        let Op::Shfl { mode, mask, .. } = op_at(env, &threads[ti]) else {
            continue;
        };
        let group = threads[ti].get(env, mask) as u32;
        if group & (1 << l) == 0 {
            return Err(fault(
                env,
                &threads[ti],
                format!(
                    "shfl.sync with membermask {group:#010x}, which does not include the executing lane {l}"
                ),
            ));
        }
        let mut complete = true;
        for (m, lane) in lanes.iter().enumerate() {
            if group & (1 << m) == 0 {
                continue;
            }
            let Some(mi) = *lane else {
                return Err(fault(
                    env,
                    &threads[ti],
                    format!(
                        "shfl.sync membermask {group:#010x} names lane {m}, which this block does not have"
                    ),
                ));
            };
            let t = &threads[mi];
            if t.state == State::Exited {
                return Err(fault(
                    env,
                    &threads[ti],
                    format!("shfl.sync membermask {group:#010x} names lane {m}, which has exited"),
                ));
            }
            let same = t.state == State::Waiting
                && matches!(op_at(env, t), Op::Shfl { mode: m2, mask: k2, .. } if m2 == mode && t.get(env, k2) as u32 == group);
            complete &= same;
        }
        done |= group;
        if !complete {
            continue;
        }
        warp::shuffle(threads, env, lanes, group).map_err(|(ti, m)| fault(env, &threads[ti], m))?;
        for m in 0..32 {
            if group & (1 << m) != 0 {
                let t = &mut threads[lanes[m].expect("checked")];
                t.executed += 1;
                t.pc += 1;
                t.state = State::Ready;
            }
        }
        released = true;
    }
    Ok(released)
}

fn deadlock(threads: &[Thread], env: &BlockEnv) -> EmuError {
    let mut at: Vec<String> = Vec::new();
    for t in threads.iter().filter(|t| t.state == State::Waiting).take(8) {
        let ins = &env.kernel.instrs[t.pc];
        at.push(format!("thread {:?} at PTX line {}", t.tid, ins.line));
    }
    let exited = threads.iter().filter(|t| t.state == State::Exited).count();
    EmuError::Deadlock {
        kernel: env.kernel.name.clone(),
        block: env.ctaid,
        msg: format!(
            "no barrier or warp collective can complete ({exited} of {} threads exited); waiting: {}",
            threads.len(),
            at.join("; ")
        ),
    }
}
