//! One typed table: the operations the agent needs on a BPF hash map, written once over
//! aya's maps and once as an in-memory fake with a capacity and failure injection.
//!
//! A map is a `Table<K, V>` whatever it holds, so a new map adds no methods to any seam.

use std::{
    cell::Cell,
    collections::BTreeMap,
    ops::{Deref, DerefMut},
    rc::Rc,
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData, MapError},
};

use super::store::StoreError;

/// A hash map of `K` to `V`. Each call is one kernel map operation (or a dump).
pub trait Table<K, V> {
    /// Inserts or replaces an entry.
    fn put(&mut self, key: K, value: V) -> Result<(), StoreError>;
    /// Inserts an entry unless one exists; `Ok(false)` when it did (it is kept).
    fn put_new(&mut self, key: K, value: V) -> Result<bool, StoreError>;
    /// Removes an entry; a missing one is not an error.
    fn delete(&mut self, key: &K) -> Result<(), StoreError>;
    /// Every entry.
    fn entries(&self) -> Result<Vec<(K, V)>, StoreError>;
    /// Every key (without copying the values out, where the map can).
    fn keys(&self) -> Result<Vec<K>, StoreError> {
        Ok(self.entries()?.into_iter().map(|(k, _)| k).collect())
    }
}

/// A kernel hash map as a [`Table`]; `name` labels its errors.
pub struct KernelTable<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
    /// A dump skips entries it cannot read instead of failing: for the tables the programs
    /// insert into and the agent deletes from while it walks them (a deleted entry ends the
    /// walk early or is skipped, both fine for garbage collection and status).
    lenient: bool,
}

impl<K: Pod, V: Pod> KernelTable<K, V> {
    pub fn new(name: &'static str, map: HashMap<MapData, K, V>) -> Self {
        Self {
            name,
            map,
            lenient: false,
        }
    }

    /// A table whose dumps skip what changes under them (see the field).
    pub fn lenient(name: &'static str, map: HashMap<MapData, K, V>) -> Self {
        Self {
            lenient: true,
            ..Self::new(name, map)
        }
    }

    /// `max_entries`, as the kernel reports it.
    pub fn capacity(&self) -> u32 {
        self.map.map().info().map_or(0, |i| i.max_entries())
    }
}

/// `BPF_NOEXIST`: create only.
const NO_EXIST: u64 = 1;

fn is_errno(e: &MapError, errno: i32) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(errno))
        || (errno == libc::ENOENT && matches!(e, MapError::KeyNotFound | MapError::ElementNotFound))
}

impl<K: Pod, V: Pod> Table<K, V> for KernelTable<K, V> {
    fn put(&mut self, key: K, value: V) -> Result<(), StoreError> {
        self.map
            .insert(key, value, 0)
            .map_err(|e| StoreError::new(self.name, "put", e))
    }

    fn put_new(&mut self, key: K, value: V) -> Result<bool, StoreError> {
        match self.map.insert(key, value, NO_EXIST) {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(false),
            Err(e) => Err(StoreError::new(self.name, "put new", e)),
        }
    }

    fn delete(&mut self, key: &K) -> Result<(), StoreError> {
        match self.map.remove(key) {
            Err(e) if !is_errno(&e, libc::ENOENT) => Err(StoreError::new(self.name, "delete", e)),
            _ => Ok(()),
        }
    }

    fn entries(&self) -> Result<Vec<(K, V)>, StoreError> {
        if self.lenient {
            return Ok(self.map.iter().filter_map(Result::ok).collect());
        }
        self.map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::new(self.name, "dump", e))
    }

    fn keys(&self) -> Result<Vec<K>, StoreError> {
        self.map
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::new(self.name, "keys", e))
    }
}

/// How many more operations the fakes that share it let succeed (`None`: all of them): fault
/// injection across every table of one fake store. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Budget(Rc<Cell<Option<usize>>>);

impl Budget {
    /// Fails every operation after `n` more successful ones (`None`: none fails).
    pub fn fail_after(&self, n: Option<usize>) {
        self.0.set(n);
    }

    pub(crate) fn step(
        &self,
        map: &'static str,
        operation: &'static str,
    ) -> Result<(), StoreError> {
        match self.0.get() {
            Some(0) => Err(StoreError {
                map,
                operation,
                source: None,
            }),
            Some(n) => {
                self.0.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// A budget is not part of a fake's contents.
impl PartialEq for Budget {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Budget {}

/// An in-memory [`Table`] that holds at most `capacity` entries (a put beyond fails, as the
/// kernel's does) and fails its operations once its [`Budget`] is spent. It derefs to its
/// entries, for tests that set a table up or look into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeTable<K, V> {
    pub name: &'static str,
    pub entries: BTreeMap<K, V>,
    pub capacity: usize,
    pub budget: Budget,
}

impl<K, V> FakeTable<K, V> {
    pub fn new(name: &'static str, capacity: usize, budget: Budget) -> Self {
        Self {
            name,
            entries: BTreeMap::new(),
            capacity,
            budget,
        }
    }

    fn fail(&self, operation: &'static str) -> Result<(), StoreError> {
        self.budget.step(self.name, operation)
    }
}

impl<K, V> Deref for FakeTable<K, V> {
    type Target = BTreeMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl<K, V> DerefMut for FakeTable<K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.entries
    }
}

impl<K: Ord + Copy, V: Copy> Table<K, V> for FakeTable<K, V> {
    fn put(&mut self, key: K, value: V) -> Result<(), StoreError> {
        self.fail("put")?;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            return Err(StoreError {
                map: self.name,
                operation: "put (full)",
                source: None,
            });
        }
        self.entries.insert(key, value);
        Ok(())
    }

    fn put_new(&mut self, key: K, value: V) -> Result<bool, StoreError> {
        if self.entries.contains_key(&key) {
            self.fail("put new")?;
            return Ok(false);
        }
        self.put(key, value).map(|()| true)
    }

    fn delete(&mut self, key: &K) -> Result<(), StoreError> {
        self.fail("delete")?;
        self.entries.remove(key);
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(K, V)>, StoreError> {
        Ok(self.entries.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn keys(&self) -> Result<Vec<K>, StoreError> {
        Ok(self.entries.keys().copied().collect())
    }
}

/// Makes `table` hold exactly `want`: puts what is new or changed, then deletes what is
/// no longer wanted. Returns how many puts and deletes it made.
pub fn converge<K: Ord + Copy, V: Copy + PartialEq>(
    table: &mut dyn Table<K, V>,
    want: &BTreeMap<K, V>,
) -> Result<(usize, usize), StoreError> {
    let have: BTreeMap<K, V> = table.entries()?.into_iter().collect();
    let mut puts = 0;
    for (k, v) in want {
        if have.get(k) != Some(v) {
            table.put(*k, *v)?;
            puts += 1;
        }
    }
    let mut deletes = 0;
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        table.delete(k)?;
        deletes += 1;
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converge_puts_changes_and_deletes_the_rest() {
        let mut t: FakeTable<u32, u32> = FakeTable::new("t", 8, Budget::default());
        t.put(1, 10).unwrap();
        t.put(2, 20).unwrap();
        let want = BTreeMap::from([(2, 21), (3, 30)]);
        assert_eq!(converge(&mut t, &want).unwrap(), (2, 1));
        assert_eq!(t.entries, want);
        assert_eq!(converge(&mut t, &want).unwrap(), (0, 0));
    }

    #[test]
    fn a_full_fake_refuses_new_keys_but_replaces_old_ones() {
        let mut t: FakeTable<u32, u32> = FakeTable::new("t", 1, Budget::default());
        t.put(1, 1).unwrap();
        assert!(t.put(2, 2).is_err());
        t.put(1, 5).unwrap();
        assert!(!t.put_new(1, 6).unwrap());
        assert_eq!(t.entries[&1], 5);
    }

    #[test]
    fn injected_failures_fail_and_leave_the_table_alone() {
        let budget = Budget::default();
        let mut t: FakeTable<u32, u32> = FakeTable::new("t", 4, budget.clone());
        let mut other: FakeTable<u32, u32> = FakeTable::new("u", 4, budget.clone());
        budget.fail_after(Some(1));
        other.put(1, 1).unwrap();
        assert!(t.put(1, 1).is_err(), "the budget is shared");
        assert!(t.entries.is_empty());
        budget.fail_after(None);
        t.put(1, 1).unwrap();
    }
}
