//! The task records, in chunks of fixed size that never move.
//!
//! Task records are kept for good (terminal states are final and stay queryable), so the
//! table only grows, by one record a lifecycle. As one `Vec` it doubled, and every doubling
//! copied the whole table into fresh memory: in the core bench that copy and the page faults
//! of its target were about a tenth of a lifecycle's time. Here a full chunk is followed by a
//! new one, allocated at its final size, and no record is ever copied. The first chunk grows
//! as a `Vec` does, so that a small core does not pay for a whole chunk.

use crate::scheduler::Task;

/// Records per chunk: a power of two, so that finding a record is a shift and a mask.
/// 4,096 records of 128 bytes: half a MiB, a few hundred chunks for a million tasks.
const CHUNK: usize = 4096;

#[derive(Debug, Clone, Default)]
pub(crate) struct TaskTable {
    /// Every chunk but the last holds exactly [`CHUNK`] records; record `i` is in chunk
    /// `i / CHUNK`, at `i % CHUNK`.
    chunks: Vec<Vec<Task>>,
}

impl TaskTable {
    pub fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    pub fn push(&mut self, task: Task) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(task),
            Some(_) => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(task);
                self.chunks.push(chunk);
            }
            None => self.chunks.push(vec![task]),
        }
    }

    /// Makes room in the chunk directory for `additional` more records. The chunks
    /// themselves come as they fill: reserving them ahead would only move their page faults.
    pub fn reserve(&mut self, additional: usize) {
        self.chunks
            .reserve((self.len() + additional).div_ceil(CHUNK));
    }

    pub fn get(&self, i: usize) -> Option<&Task> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Task> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// The records in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Task> + '_ {
        self.into_iter()
    }
}

impl std::ops::Index<usize> for TaskTable {
    type Output = Task;

    fn index(&self, i: usize) -> &Task {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl std::ops::IndexMut<usize> for TaskTable {
    fn index_mut(&mut self, i: usize) -> &mut Task {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<'a> IntoIterator for &'a TaskTable {
    type Item = &'a Task;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<Task>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Core, CoreConfig, TaskSpec};

    /// Task records as the core makes them, each told apart by its submit time.
    fn records(n: usize) -> Vec<Task> {
        let mut core = Core::new(CoreConfig::default());
        for at in 0..n as u64 {
            core.submit(at, TaskSpec::new("k")).expect("valid spec");
        }
        core.tasks.iter().cloned().collect()
    }

    #[test]
    fn records_keep_their_index_across_chunk_boundaries() {
        let n = 2 * CHUNK + 3;
        let mut table = TaskTable::default();
        table.reserve(n);
        for t in records(n) {
            table.push(t);
        }
        assert_eq!(table.len(), n);
        for i in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, n - 1] {
            assert_eq!(table[i].submitted_at, i as u64, "record {i}");
            assert_eq!(table.get(i).map(|t| t.submitted_at), Some(i as u64));
        }
        assert!(table.get(n).is_none());
        let in_order: Vec<u64> = table.iter().map(|t| t.submitted_at).collect();
        assert_eq!(in_order, (0..n as u64).collect::<Vec<_>>());
        table[CHUNK].attempt = 7;
        assert_eq!(table.get_mut(CHUNK).map(|t| t.attempt), Some(7));
    }

    #[test]
    fn full_chunks_are_never_reallocated() {
        let mut table = TaskTable::default();
        let mut records = records(3 * CHUNK).into_iter();
        for t in records.by_ref().take(CHUNK + 1) {
            table.push(t);
        }
        let first_of_second_chunk: *const Task = &table[CHUNK];
        for t in records {
            table.push(t);
        }
        assert!(std::ptr::eq(first_of_second_chunk, &table[CHUNK]));
    }
}
