//! How journal rows are encoded.
//!
//! Format 1 (written since the driver-cpu work): the byte `0x01`, then the events back to
//! back, each as its kind's tag byte, `seq` and `at` as zigzag LEB128 deltas from the event
//! before (from 0 for the first), then the variant's fields in declaration order: integers
//! as LEB128, strings and byte strings as a LEB128 length and the bytes, options as `0` or
//! `1` and the value, the nested enums ([`AttemptOutcome`], [`InterruptReason`]) as a tag
//! byte and their fields. A task spec is written as its JSON text (length-prefixed), the very
//! form the JSON journal used, so that its defaults and its validation stay in one place.
//! Writing JSON cost the writer thread more CPU than SQLite's own work on the rows, and made a
//! task's five events take ~450 bytes instead of ~60.
//!
//! Format 0: a JSON array of events (what every journal row held before format 1). Rows in
//! it start with `[` (or JSON whitespace) and are still read, by [`crate::event_decode`]. A
//! row that starts with any other byte was written by a later version: it is refused with a
//! message that says so, never guessed at.

use handyman_core::{
    AttemptOutcome, CompactString, Event, EventKind, GroupConfig, InterruptReason, Millis, TaskSpec,
};

/// The first byte of a format-1 row.
pub const FORMAT_1: u8 = 0x01;

/// Why a journal row could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("JSON journal row: {0}")]
    Json(#[from] serde_json::Error),
    #[error("binary journal row, event {index}: {what}")]
    Binary { index: usize, what: String },
    #[error(
        "journal row in format {0:#04x}, which this version of handyman does not know (written by a later version?)"
    )]
    UnknownFormat(u8),
    #[error("empty journal row")]
    Empty,
}

/// Appends `events` to `out` in format 1 (the caller writes [`FORMAT_1`] first, once).
/// `prev` holds the `seq` and `at` of the event before, `(0, 0)` at the start of a row.
pub fn encode_into(
    out: &mut Vec<u8>,
    prev: &mut (u64, Millis),
    events: &[Event],
) -> Result<(), serde_json::Error> {
    for e in events {
        let kind_tag = tag(&e.kind);
        out.push(kind_tag);
        zigzag(out, e.seq.wrapping_sub(prev.0) as i64);
        zigzag(out, e.at.wrapping_sub(prev.1) as i64);
        *prev = (e.seq, e.at);
        use EventKind as K;
        match &e.kind {
            K::PoolConfigured { pool, slots } => {
                bytes(out, pool.as_bytes());
                uint(out, u64::from(*slots));
            }
            K::GroupConfigured { group, config } => {
                bytes(out, group.as_bytes());
                uint(out, u64::from(config.weight));
                uint(out, u64::from(config.cap));
                uint(out, u64::from(config.floor));
            }
            K::Submitted { id, spec, parent } => {
                uint(out, *id);
                match parent {
                    None => out.push(0),
                    Some(p) => {
                        out.push(1);
                        uint(out, *p);
                    }
                }
                // The text's length is known once it is written: write it, then insert
                // its length before it (moving only the text).
                let start = out.len();
                serde_json::to_writer(&mut *out, spec.as_ref())?;
                let (mut prefix, mut n, mut len) = ([0u8; 10], 0, (out.len() - start) as u64);
                while len >= 0x80 {
                    prefix[n] = (len as u8) | 0x80;
                    len >>= 7;
                    n += 1;
                }
                prefix[n] = len as u8;
                out.splice(start..start, prefix[..=n].iter().copied());
            }
            K::Released { id } | K::Blocked { id } | K::Requeued { id } | K::Succeeded { id } => {
                uint(out, *id)
            }
            K::Assigned { id, attempt, pool } => {
                uint(out, *id);
                uint(out, u64::from(*attempt));
                bytes(out, pool.as_bytes());
            }
            K::Started { id, attempt } => {
                uint(out, *id);
                uint(out, u64::from(*attempt));
            }
            K::InterruptRequested {
                id,
                attempt,
                reason,
            } => {
                uint(out, *id);
                uint(out, u64::from(*attempt));
                out.push(match reason {
                    InterruptReason::Timeout => 0,
                    InterruptReason::Cancel => 1,
                });
            }
            K::AttemptEnded {
                id,
                attempt,
                outcome,
                ran_ms,
            } => {
                uint(out, *id);
                uint(out, u64::from(*attempt));
                match outcome {
                    AttemptOutcome::Success { output } => {
                        out.push(0);
                        bytes(out, output);
                    }
                    AttemptOutcome::Transient { message } => {
                        out.push(1);
                        bytes(out, message.as_bytes());
                    }
                    AttemptOutcome::Fatal { message } => {
                        out.push(2);
                        bytes(out, message.as_bytes());
                    }
                    AttemptOutcome::ContinueLater => out.push(3),
                    AttemptOutcome::RetryAfter { delay_ms } => {
                        out.push(4);
                        uint(out, *delay_ms);
                    }
                    AttemptOutcome::Interrupted => out.push(5),
                    AttemptOutcome::Lost { why } => {
                        out.push(6);
                        bytes(out, why.as_bytes());
                    }
                }
                uint(out, *ran_ms);
            }
            K::RetryScheduled { id, due } => {
                uint(out, *id);
                uint(out, *due);
            }
            K::Failed { id, reason } | K::Cancelled { id, reason } => {
                uint(out, *id);
                bytes(out, reason.as_bytes());
            }
            K::StaleReport {
                id,
                attempt,
                current,
            } => {
                uint(out, *id);
                uint(out, u64::from(*attempt));
                uint(out, u64::from(*current));
            }
        }
    }
    Ok(())
}

fn tag(kind: &EventKind) -> u8 {
    use EventKind as K;
    match kind {
        K::PoolConfigured { .. } => 1,
        K::GroupConfigured { .. } => 2,
        K::Submitted { .. } => 3,
        K::Released { .. } => 4,
        K::Blocked { .. } => 5,
        K::Assigned { .. } => 6,
        K::Started { .. } => 7,
        K::InterruptRequested { .. } => 8,
        K::AttemptEnded { .. } => 9,
        K::RetryScheduled { .. } => 10,
        K::Requeued { .. } => 11,
        K::Succeeded { .. } => 12,
        K::Failed { .. } => 13,
        K::Cancelled { .. } => 14,
        K::StaleReport { .. } => 15,
    }
}

/// Encodes one row in format 1.
pub fn encode(events: &[Event]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(1 + events.len() * 16);
    out.push(FORMAT_1);
    encode_into(&mut out, &mut (0, 0), events)?;
    Ok(out)
}

/// Decodes one journal row, in whichever format it was written.
pub fn decode(blob: &[u8]) -> Result<Vec<Event>, DecodeError> {
    match blob.first() {
        None => Err(DecodeError::Empty),
        Some(&FORMAT_1) => decode_format_1(&blob[1..]),
        Some(b'[' | b' ' | b'\t' | b'\n' | b'\r') => Ok(crate::event_decode::decode_events(blob)?),
        Some(&other) => Err(DecodeError::UnknownFormat(other)),
    }
}

fn zigzag(out: &mut Vec<u8>, v: i64) {
    uint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over a format-1 row; errors name what was being read.
struct Reader<'a> {
    rest: &'a [u8],
}

type R<T> = Result<T, String>;

impl<'a> Reader<'a> {
    fn byte(&mut self, what: &str) -> R<u8> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| format!("row ends inside {what}"))?;
        self.rest = rest;
        Ok(b)
    }

    fn uint(&mut self, what: &str) -> R<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("{what} overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("{what} overflows 64 bits"))
    }

    fn u32(&mut self, what: &str) -> R<u32> {
        u32::try_from(self.uint(what)?).map_err(|_| format!("{what} overflows 32 bits"))
    }

    fn zigzag(&mut self, what: &str) -> R<i64> {
        let v = self.uint(what)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn bytes(&mut self, what: &str) -> R<&'a [u8]> {
        let len = self.uint(what)?;
        if len > self.rest.len() as u64 {
            return Err(format!("{what} is longer than the row"));
        }
        let (b, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Ok(b)
    }

    fn string(&mut self, what: &str) -> R<String> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

fn decode_format_1(blob: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let mut r = Reader { rest: blob };
    let mut events = Vec::new();
    let (mut seq, mut at) = (0u64, 0u64);
    while !r.rest.is_empty() {
        let index = events.len();
        let event = decode_one(&mut r, &mut seq, &mut at)
            .map_err(|what| DecodeError::Binary { index, what })?;
        events.push(event);
    }
    Ok(events)
}

fn decode_one(r: &mut Reader<'_>, seq: &mut u64, at: &mut Millis) -> R<Event> {
    let tag = r.byte("the event tag")?;
    *seq = seq.wrapping_add(r.zigzag("seq")? as u64);
    *at = at.wrapping_add(r.zigzag("at")? as u64);
    use EventKind as K;
    let kind = match tag {
        1 => K::PoolConfigured {
            pool: r.string("pool")?,
            slots: r.u32("slots")?,
        },
        2 => K::GroupConfigured {
            group: r.string("group")?,
            config: GroupConfig {
                weight: r.u32("weight")?,
                cap: r.u32("cap")?,
                floor: r.u32("floor")?,
            },
        },
        3 => {
            let id = r.uint("id")?;
            let parent = match r.byte("parent")? {
                0 => None,
                1 => Some(r.uint("parent")?),
                b => return Err(format!("parent: bad option byte {b}")),
            };
            let text = r.bytes("spec")?;
            let spec: TaskSpec =
                serde_json::from_slice(text).map_err(|e| format!("spec of task {id}: {e}"))?;
            K::Submitted {
                id,
                spec: Box::new(spec),
                parent,
            }
        }
        4 => K::Released { id: r.uint("id")? },
        5 => K::Blocked { id: r.uint("id")? },
        6 => {
            let id = r.uint("id")?;
            let attempt = r.u32("attempt")?;
            let pool = r.bytes("pool")?;
            let pool = std::str::from_utf8(pool).map_err(|_| "pool is not UTF-8".to_string())?;
            K::Assigned {
                id,
                attempt,
                pool: CompactString::from(pool),
            }
        }
        7 => K::Started {
            id: r.uint("id")?,
            attempt: r.u32("attempt")?,
        },
        8 => K::InterruptRequested {
            id: r.uint("id")?,
            attempt: r.u32("attempt")?,
            reason: match r.byte("reason")? {
                0 => InterruptReason::Timeout,
                1 => InterruptReason::Cancel,
                b => return Err(format!("unknown interrupt reason {b}")),
            },
        },
        9 => {
            let id = r.uint("id")?;
            let attempt = r.u32("attempt")?;
            let outcome = match r.byte("outcome")? {
                0 => AttemptOutcome::Success {
                    output: r.bytes("output")?.to_vec(),
                },
                1 => AttemptOutcome::Transient {
                    message: r.string("message")?,
                },
                2 => AttemptOutcome::Fatal {
                    message: r.string("message")?,
                },
                3 => AttemptOutcome::ContinueLater,
                4 => AttemptOutcome::RetryAfter {
                    delay_ms: r.uint("delay_ms")?,
                },
                5 => AttemptOutcome::Interrupted,
                6 => AttemptOutcome::Lost {
                    why: r.string("why")?,
                },
                b => return Err(format!("unknown attempt outcome {b}")),
            };
            K::AttemptEnded {
                id,
                attempt,
                outcome,
                ran_ms: r.uint("ran_ms")?,
            }
        }
        10 => K::RetryScheduled {
            id: r.uint("id")?,
            due: r.uint("due")?,
        },
        11 => K::Requeued { id: r.uint("id")? },
        12 => K::Succeeded { id: r.uint("id")? },
        13 => K::Failed {
            id: r.uint("id")?,
            reason: r.string("reason")?,
        },
        14 => K::Cancelled {
            id: r.uint("id")?,
            reason: r.string("reason")?,
        },
        15 => K::StaleReport {
            id: r.uint("id")?,
            attempt: r.u32("attempt")?,
            current: r.u32("current")?,
        },
        t => return Err(format!("unknown event tag {t}")),
    };
    Ok(Event {
        seq: *seq,
        at: *at,
        kind,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use handyman_core::{Ageing, Backoff};

    pub(crate) fn every_kind() -> Vec<EventKind> {
        use EventKind as K;
        let full = TaskSpec::new("table-copy")
            .pool("team/gpu")
            .group("customer-7")
            .priority(-3)
            .ageing(Ageing::Linear {
                per_minute: 1.5,
                cap: 10.0,
            })
            .after(41)
            .rank_in("binlog", 2)
            .max_runtime_ms(1)
            .max_retries(0)
            .backoff(Backoff {
                initial_ms: 5,
                ..Backoff::default()
            })
            .dedup_key("k")
            .payload(vec![0xff, 0, 1])
            .on_success(TaskSpec::new("echo").payload("{\"x\": \"é\"}"));
        vec![
            K::PoolConfigured {
                pool: "p\"ool".into(),
                slots: u32::MAX,
            },
            K::GroupConfigured {
                group: "g".into(),
                config: GroupConfig::default(),
            },
            K::Submitted {
                id: 7,
                spec: Box::new(full),
                parent: Some(2),
            },
            K::Submitted {
                id: 8,
                spec: Box::new(TaskSpec::new("noop").payload("x".repeat(300))),
                parent: None,
            },
            K::Released { id: 7 },
            K::Blocked { id: 7 },
            K::Assigned {
                id: u64::MAX,
                attempt: 1,
                pool: CompactString::const_new("default"),
            },
            K::Started { id: 7, attempt: 1 },
            K::InterruptRequested {
                id: 7,
                attempt: 1,
                reason: InterruptReason::Timeout,
            },
            K::InterruptRequested {
                id: 7,
                attempt: 1,
                reason: InterruptReason::Cancel,
            },
            K::AttemptEnded {
                id: 7,
                attempt: 1,
                outcome: AttemptOutcome::Success {
                    output: vec![0xff, 0, 1],
                },
                ran_ms: 12,
            },
            K::AttemptEnded {
                id: 7,
                attempt: 2,
                outcome: AttemptOutcome::Transient {
                    message: "t".into(),
                },
                ran_ms: 0,
            },
            K::AttemptEnded {
                id: 7,
                attempt: 3,
                outcome: AttemptOutcome::Fatal {
                    message: "f".into(),
                },
                ran_ms: 1 << 40,
            },
            K::AttemptEnded {
                id: 7,
                attempt: 4,
                outcome: AttemptOutcome::ContinueLater,
                ran_ms: 1,
            },
            K::AttemptEnded {
                id: 7,
                attempt: 5,
                outcome: AttemptOutcome::RetryAfter { delay_ms: 500 },
                ran_ms: 1,
            },
            K::AttemptEnded {
                id: 7,
                attempt: 6,
                outcome: AttemptOutcome::Interrupted,
                ran_ms: 1,
            },
            K::AttemptEnded {
                id: 7,
                attempt: u32::MAX,
                outcome: AttemptOutcome::Lost { why: "gone".into() },
                ran_ms: 0,
            },
            K::RetryScheduled { id: 7, due: 99 },
            K::Requeued { id: 7 },
            K::Succeeded { id: 7 },
            K::Failed {
                id: 7,
                reason: "no".into(),
            },
            K::Cancelled {
                id: 7,
                reason: "stop".into(),
            },
            K::StaleReport {
                id: 7,
                attempt: 1,
                current: 2,
            },
        ]
    }

    fn events() -> Vec<Event> {
        // Times that go up, stay, and (not that the core does it) go down.
        every_kind()
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                seq: 1_000_000 + i as u64,
                at: [5, 5, 1 << 50, 3][i % 4],
                kind,
            })
            .collect()
    }

    #[test]
    fn every_event_survives_a_round_trip() {
        let events = events();
        let blob = encode(&events).expect("encode");
        assert_eq!(blob[0], FORMAT_1);
        assert_eq!(decode(&blob).expect("decode"), events);
    }

    #[test]
    fn rows_encoded_in_pieces_decode_as_one() {
        let events = events();
        let (a, b) = events.split_at(5);
        let mut blob = vec![FORMAT_1];
        let mut prev = (0, 0);
        encode_into(&mut blob, &mut prev, a).expect("encode");
        encode_into(&mut blob, &mut prev, b).expect("encode");
        assert_eq!(blob, encode(&events).expect("encode"));
    }

    #[test]
    fn json_rows_of_earlier_versions_still_decode() {
        let events = events();
        let json = serde_json::to_vec(&events).expect("json");
        assert_eq!(decode(&json).expect("decode"), events);
        let mut spaced = b"\n ".to_vec();
        spaced.extend_from_slice(&json);
        assert_eq!(decode(&spaced).expect("decode"), events);
    }

    #[test]
    fn a_row_of_an_unknown_format_is_refused_and_said_so() {
        let err = decode(&[0x02, 1, 2]).expect_err("refused");
        assert!(matches!(err, DecodeError::UnknownFormat(2)), "{err}");
        assert!(err.to_string().contains("later version"), "{err}");
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
    }

    #[test]
    fn a_cut_or_corrupt_row_is_an_error_not_a_panic() {
        let blob = encode(&events()).expect("encode");
        for cut in 2..blob.len() {
            // Cutting at an event boundary leaves a valid shorter row; anywhere else fails.
            if let Ok(decoded) = decode(&blob[..cut]) {
                assert!(decoded.len() < events().len());
            }
        }
        for bad in [
            &[FORMAT_1, 99, 2, 2][..],
            &[
                FORMAT_1, 4, 2, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            &[FORMAT_1, 13, 2, 2, 1, 5, b'a'],
            &[FORMAT_1, 13, 2, 2, 1, 1, 0xff],
            &[FORMAT_1, 3, 2, 2, 1, 0, 3, b'{', b'}', b'x'],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
