//! The name table of groups: a group's name to its [`GroupRef`].
//!
//! Every submit looks its group up by name, and with 10,000 groups that lookup is a cache
//! miss on the table's entry. An entry used to hold the name beside the ref; here it is the
//! ref alone (see [`GroupRef`] for what it says), and the name it is checked against is the
//! one in the group's own record, which the submit reads next anyway.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::scheduler::{Group, GroupRef};

#[derive(Debug, Clone, Default)]
pub(crate) struct GroupNames {
    refs: HashTable<GroupRef>,
}

fn hash(name: &str) -> u64 {
    FxBuildHasher.hash_one(name)
}

impl GroupNames {
    /// The ref of the group named `name`, given the group records. `on_candidate` sees the
    /// entry the name's hash leads to before its group's name is compared, so that the caller
    /// can ask for what it reads next while that comparison waits for the group's record.
    #[inline]
    pub fn find(
        &self,
        name: &str,
        groups: &[Group],
        mut on_candidate: impl FnMut(&GroupRef),
    ) -> Option<GroupRef> {
        self.refs
            .find(hash(name), |candidate| {
                on_candidate(candidate);
                groups[candidate.group as usize].name == name
            })
            .copied()
    }

    pub fn get(&self, name: &str, groups: &[Group]) -> Option<GroupRef> {
        self.find(name, groups, |_| {})
    }

    pub fn get_mut(&mut self, name: &str, groups: &[Group]) -> Option<&mut GroupRef> {
        self.refs.find_mut(hash(name), |candidate| {
            groups[candidate.group as usize].name == name
        })
    }

    /// Files `group_ref`, whose group (already in `groups`) has a name not filed yet.
    pub fn insert(&mut self, group_ref: GroupRef, groups: &[Group]) {
        let name = &groups[group_ref.group as usize].name;
        self.refs.insert_unique(hash(name), group_ref, |filed| {
            hash(&groups[filed.group as usize].name)
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.refs.len()
    }
}

#[cfg(test)]
mod tests {
    use crate::{Core, CoreConfig, GroupConfig};

    #[test]
    fn every_group_is_found_by_its_name_and_no_other() {
        let mut core = Core::new(CoreConfig::default());
        // Enough groups to make the table grow (and rehash from the group records) often.
        for g in 0..3_000 {
            core.configure_group(0, &format!("team-{g}"), GroupConfig::default());
        }
        let names = &core.group_ids;
        assert_eq!(names.len(), 3_000);
        for g in (0..3_000).step_by(7) {
            let found = names.get(&format!("team-{g}"), &core.groups);
            assert_eq!(found.map(|r| r.group), Some(g));
        }
        assert!(names.get("team-3000", &core.groups).is_none());
        assert!(names.get("team-", &core.groups).is_none());
    }
}
