//! A faster decoder for journaled events.
//!
//! [`EventKind`] is an internally tagged enum (`"event": "submitted"`), which serde decodes
//! by first buffering every field of the object into a generic tree and then decoding the
//! variant from that tree: on a restart with a long journal that is most of the replay time.
//! The journal always writes the tag first, so this decoder reads the tag, then decodes the
//! rest of the object straight into a struct with the variant's fields. Anything else (a
//! tag elsewhere, a variant it does not know) goes through the derived decoder, so it
//! accepts exactly what `serde_json::from_slice::<Vec<Event>>` accepts for valid journals.

use std::borrow::Cow;
use std::fmt;

use handyman_core::{
    AttemptOutcome, CompactString, Event, EventKind, GroupConfig, InterruptReason, Millis, TaskId,
    TaskSpec,
};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Decodes one journal row (a JSON array of events).
pub fn decode_events(blob: &[u8]) -> Result<Vec<Event>, serde_json::Error> {
    let events: Vec<FastEvent> = serde_json::from_slice(blob)?;
    Ok(events.into_iter().map(|e| e.0).collect())
}

struct FastEvent(Event);

impl<'de> Deserialize<'de> for FastEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            seq: u64,
            at: Millis,
            kind: FastKind,
        }
        let raw = Raw::deserialize(d)?;
        Ok(FastEvent(Event {
            seq: raw.seq,
            at: raw.at,
            kind: raw.kind.0,
        }))
    }
}

struct FastKind(EventKind);

impl<'de> Deserialize<'de> for FastKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(KindVisitor)
    }
}

struct KindVisitor;

fn rest<'de, A: MapAccess<'de>, T: Deserialize<'de>>(map: A) -> Result<T, A::Error> {
    T::deserialize(MapAccessDeserializer::new(map))
}

impl<'de> Visitor<'de> for KindVisitor {
    type Value = FastKind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a journal event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FastKind, A::Error> {
        let Some(key) = map.next_key::<Cow<'de, str>>()? else {
            return slow(serde_json::Map::new(), map);
        };
        if key != "event" {
            let mut first = serde_json::Map::new();
            first.insert(key.into_owned(), map.next_value()?);
            return slow(first, map);
        }
        let tag: Cow<'de, str> = map.next_value()?;
        use EventKind as K;
        let kind = match &*tag {
            "pool_configured" => {
                #[derive(Deserialize)]
                struct V {
                    pool: String,
                    slots: u32,
                }
                let v: V = rest(map)?;
                K::PoolConfigured {
                    pool: v.pool,
                    slots: v.slots,
                }
            }
            "group_configured" => {
                #[derive(Deserialize)]
                struct V {
                    group: String,
                    config: GroupConfig,
                }
                let v: V = rest(map)?;
                K::GroupConfigured {
                    group: v.group,
                    config: v.config,
                }
            }
            "submitted" => {
                #[derive(Deserialize)]
                struct V {
                    id: TaskId,
                    spec: Box<TaskSpec>,
                    parent: Option<TaskId>,
                }
                let v: V = rest(map)?;
                K::Submitted {
                    id: v.id,
                    spec: v.spec,
                    parent: v.parent,
                }
            }
            "released" => K::Released {
                id: rest::<_, Id>(map)?.id,
            },
            "blocked" => K::Blocked {
                id: rest::<_, Id>(map)?.id,
            },
            "assigned" => {
                #[derive(Deserialize)]
                struct V {
                    id: TaskId,
                    attempt: u32,
                    pool: CompactString,
                }
                let v: V = rest(map)?;
                K::Assigned {
                    id: v.id,
                    attempt: v.attempt,
                    pool: v.pool,
                }
            }
            "started" => {
                let v: IdAttempt = rest(map)?;
                K::Started {
                    id: v.id,
                    attempt: v.attempt,
                }
            }
            "interrupt_requested" => {
                #[derive(Deserialize)]
                struct V {
                    id: TaskId,
                    attempt: u32,
                    reason: InterruptReason,
                }
                let v: V = rest(map)?;
                K::InterruptRequested {
                    id: v.id,
                    attempt: v.attempt,
                    reason: v.reason,
                }
            }
            "attempt_ended" => {
                #[derive(Deserialize)]
                struct V {
                    id: TaskId,
                    attempt: u32,
                    outcome: AttemptOutcome,
                    ran_ms: Millis,
                }
                let v: V = rest(map)?;
                K::AttemptEnded {
                    id: v.id,
                    attempt: v.attempt,
                    outcome: v.outcome,
                    ran_ms: v.ran_ms,
                }
            }
            "retry_scheduled" => {
                #[derive(Deserialize)]
                struct V {
                    id: TaskId,
                    due: Millis,
                }
                let v: V = rest(map)?;
                K::RetryScheduled {
                    id: v.id,
                    due: v.due,
                }
            }
            "requeued" => K::Requeued {
                id: rest::<_, Id>(map)?.id,
            },
            "succeeded" => K::Succeeded {
                id: rest::<_, Id>(map)?.id,
            },
            "failed" => {
                let v: IdReason = rest(map)?;
                K::Failed {
                    id: v.id,
                    reason: v.reason,
                }
            }
            "cancelled" => {
                let v: IdReason = rest(map)?;
                K::Cancelled {
                    id: v.id,
                    reason: v.reason,
                }
            }
            "stale_report" => {
                #[derive(Deserialize)]
                struct V {
                    id: TaskId,
                    attempt: u32,
                    current: u32,
                }
                let v: V = rest(map)?;
                K::StaleReport {
                    id: v.id,
                    attempt: v.attempt,
                    current: v.current,
                }
            }
            _ => {
                let mut first = serde_json::Map::new();
                first.insert("event".to_owned(), serde_json::Value::from(&*tag));
                return slow(first, map);
            }
        };
        Ok(FastKind(kind))
    }
}

#[derive(Deserialize)]
struct Id {
    id: TaskId,
}

#[derive(Deserialize)]
struct IdAttempt {
    id: TaskId,
    attempt: u32,
}

#[derive(Deserialize)]
struct IdReason {
    id: TaskId,
    reason: String,
}

/// The derived decoder, for whatever the fast path does not handle.
fn slow<'de, A: MapAccess<'de>>(
    mut object: serde_json::Map<String, serde_json::Value>,
    mut map: A,
) -> Result<FastKind, A::Error> {
    while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
        object.insert(k, v);
    }
    EventKind::deserialize(serde_json::Value::Object(object))
        .map(FastKind)
        .map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal codec's every-kind list, plus a payload full of JSON escapes.
    fn every_kind() -> Vec<EventKind> {
        let mut kinds = crate::journal_codec::tests::every_kind();
        kinds.push(EventKind::Submitted {
            id: 9,
            spec: Box::new(TaskSpec {
                payload: b"{\"x\": \"a \\\"quoted\\\" \\u00e9\"}".to_vec(),
                ..TaskSpec::default()
            }),
            parent: None,
        });
        kinds.push(EventKind::Submitted {
            id: 10,
            spec: Box::default(),
            parent: None,
        });
        kinds
    }

    #[test]
    fn decodes_what_the_derived_decoder_decodes() {
        let events: Vec<Event> = every_kind()
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                seq: i as u64 + 1,
                at: 1000 + i as u64,
                kind,
            })
            .collect();
        let blob = serde_json::to_vec(&events).unwrap();
        assert_eq!(decode_events(&blob).unwrap(), events);
        let derived: Vec<Event> = serde_json::from_slice(&blob).unwrap();
        assert_eq!(derived, events);
    }

    #[test]
    fn falls_back_when_the_tag_is_not_first() {
        let blob = br#"[{"kind": {"id": 5, "event": "released"}, "at": 2, "seq": 1},
                        {"seq": 2, "at": 3, "kind": {"event": "failed", "reason": "x", "id": 5, "extra": 1}}]"#;
        let fast = decode_events(blob).unwrap();
        let derived: Vec<Event> = serde_json::from_slice(blob).unwrap();
        assert_eq!(fast, derived);
        assert_eq!(fast[0].kind, EventKind::Released { id: 5 });
    }

    #[test]
    fn rejects_what_the_derived_decoder_rejects() {
        for blob in [
            &br#"[{"seq": 1, "at": 2, "kind": {"event": "no_such_event", "id": 5}}]"#[..],
            br#"[{"seq": 1, "at": 2, "kind": {"event": "released"}}]"#,
            br#"[{"seq": 1, "at": 2, "kind": {"id": 5}}]"#,
            br#"[{"seq": 1, "at": 2, "kind": {}}]"#,
            br#"[{"seq": 1, "kind": {"event": "released", "id": 5}}]"#,
        ] {
            assert!(serde_json::from_slice::<Vec<Event>>(blob).is_err());
            assert!(
                decode_events(blob).is_err(),
                "{}",
                String::from_utf8_lossy(blob)
            );
        }
    }
}
