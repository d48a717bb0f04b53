//! One typed table: the operations the agent needs on a BPF hash map, written once over
//! aya's maps and once as an in-memory fake with a capacity and failure injection.
//!
//! A map is a `Table<K, V>` whatever it holds, so a new map adds no methods to any seam.

use std::collections::BTreeMap;

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError},
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
}

/// A kernel hash map as a [`Table`]; `name` labels its errors.
pub struct KernelTable<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
}

impl<K: Pod, V: Pod> KernelTable<K, V> {
    pub fn new(name: &'static str, map: HashMap<MapData, K, V>) -> Self {
        Self { name, map }
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
        self.map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::new(self.name, "dump", e))
    }
}

/// An in-memory [`Table`] that holds at most `capacity` entries (a put beyond fails as the
/// kernel's does, with E2BIG) and fails the operations it is told to.
#[derive(Clone, Debug)]
pub struct FakeTable<K, V> {
    pub entries: BTreeMap<K, V>,
    pub capacity: usize,
    /// The next this many operations fail.
    pub fail_next: usize,
}

impl<K, V> FakeTable<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            capacity,
            fail_next: 0,
        }
    }

    fn fail(&mut self, operation: &'static str) -> Result<(), StoreError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(StoreError {
                map: "fake",
                operation,
                source: None,
            });
        }
        Ok(())
    }
}

impl<K: Ord + Copy, V: Copy> Table<K, V> for FakeTable<K, V> {
    fn put(&mut self, key: K, value: V) -> Result<(), StoreError> {
        self.fail("put")?;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            return Err(StoreError {
                map: "fake",
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
        let mut t: FakeTable<u32, u32> = FakeTable::new(8);
        t.put(1, 10).unwrap();
        t.put(2, 20).unwrap();
        let want = BTreeMap::from([(2, 21), (3, 30)]);
        assert_eq!(converge(&mut t, &want).unwrap(), (2, 1));
        assert_eq!(t.entries, want);
        assert_eq!(converge(&mut t, &want).unwrap(), (0, 0));
    }

    #[test]
    fn a_full_fake_refuses_new_keys_but_replaces_old_ones() {
        let mut t: FakeTable<u32, u32> = FakeTable::new(1);
        t.put(1, 1).unwrap();
        assert!(t.put(2, 2).is_err());
        t.put(1, 5).unwrap();
        assert!(!t.put_new(1, 6).unwrap());
        assert_eq!(t.entries[&1], 5);
    }

    #[test]
    fn injected_failures_fail_and_leave_the_table_alone() {
        let mut t: FakeTable<u32, u32> = FakeTable::new(4);
        t.fail_next = 1;
        assert!(t.put(1, 1).is_err());
        assert!(t.entries.is_empty());
        t.put(1, 1).unwrap();
    }
}
