//! A bounded concurrent cache asked with a borrowed key, so that the request
//! path builds no owned key (no allocation) to look something up.
//!
//! Entries are filed under a 64-bit hash of the borrowed key and keep their
//! owned key beside the value. A lookup counts as a hit only when the stored
//! key equals the one asked for, so a hash collision is a miss (the value is
//! built and not cached), never another key's answer. Authorization caches
//! its Cedar entities, contexts and composed policy sets here (authz.rs).

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use dashmap::DashMap;

pub struct HashedCache<K, V> {
    map: DashMap<u64, Arc<(K, V)>, foldhash::fast::RandomState>,
    /// The hash of the borrowed keys; randomly seeded, so a client cannot
    /// choose names that collide.
    hasher: foldhash::fast::RandomState,
    /// More entries than this and the cache starts over.
    max: usize,
}

impl<K, V: Clone> HashedCache<K, V> {
    pub fn new(max: usize) -> HashedCache<K, V> {
        HashedCache { map: DashMap::with_hasher(foldhash::fast::RandomState::default()), hasher: foldhash::fast::RandomState::default(), max: max.max(1) }
    }

    /// The value for `key`: cached when `is` says the stored key is `key`,
    /// otherwise built by `build` (which returns the owned key with it) and
    /// cached unless another key holds its hash.
    pub fn get_or_build<Q: Hash + ?Sized, E>(&self, key: &Q, is: impl Fn(&K) -> bool, build: impl FnOnce() -> Result<(K, V), E>) -> Result<V, E> {
        let h = self.hasher.hash_one(key);
        if let Some(e) = self.map.get(&h) {
            if is(&e.0) {
                return Ok(e.1.clone());
            }
            drop(e);
            return build().map(|(_, v)| v);
        }
        let (k, v) = build()?;
        if self.map.len() >= self.max {
            self.map.clear();
        }
        self.map.entry(h).or_insert_with(|| Arc::new((k, v.clone())));
        Ok(v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_key_is_built_once_then_served_from_the_cache() {
        let c: HashedCache<String, u32> = HashedCache::new(8);
        let builds = Cell::new(0);
        let get = |k: &str| {
            c.get_or_build::<_, ()>(k, |o| o == k, || {
                builds.set(builds.get() + 1);
                Ok((k.to_string(), k.len() as u32))
            })
        };
        assert_eq!(get("abc"), Ok(3));
        assert_eq!(get("abc"), Ok(3));
        assert_eq!(get("abcd"), Ok(4));
        assert_eq!(builds.get(), 2);
    }

    #[test]
    fn a_stored_key_that_is_not_the_one_asked_for_is_a_miss() {
        // Stands in for a hash collision: the predicate refuses the stored key.
        let c: HashedCache<String, u32> = HashedCache::new(8);
        assert_eq!(c.get_or_build::<_, ()>("k", |_| true, || Ok(("stored".into(), 1))), Ok(1));
        assert_eq!(c.get_or_build::<_, ()>("k", |o| o == "other", || Ok(("other".into(), 2))), Ok(2), "the stored value is not returned");
        assert_eq!(c.get_or_build::<_, ()>("k", |o| o == "stored", || Ok(("x".into(), 3))), Ok(1), "and it was not replaced");
    }

    #[test]
    fn a_failed_build_caches_nothing_and_the_cache_is_bounded() {
        let c: HashedCache<u32, u32> = HashedCache::new(4);
        assert_eq!(c.get_or_build(&1u32, |o| *o == 1, || Err::<(u32, u32), _>("no")), Err("no"));
        assert!(c.is_empty());
        for i in 0..100u32 {
            c.get_or_build::<_, ()>(&i, |o| *o == i, || Ok((i, i))).unwrap();
            assert!(c.len() <= 4);
        }
    }
}
