//! Which publish lane is closed when a new topic needs one.

use super::*;

fn filled(capacity: usize, keys: &[&'static str]) -> LruMap<&'static str, usize> {
    let mut map = LruMap::new(capacity);
    for (value, &key) in keys.iter().enumerate() {
        assert_eq!(map.insert(key, value), None);
    }
    map
}

#[test]
fn a_full_map_evicts_the_least_recently_inserted_entry() {
    let mut map = filled(3, &["a", "b", "c"]);
    assert_eq!(map.insert("d", 3), Some(("a", 0)));
    assert_eq!(map.insert("e", 4), Some(("b", 1)));
    assert_eq!(map.len(), 3);
}

#[test]
fn a_lookup_makes_an_entry_the_most_recently_used() {
    let mut map = filled(3, &["a", "b", "c"]);
    assert_eq!(map.get(&"a"), Some(&0));
    assert_eq!(map.insert("d", 3), Some(("b", 1)));
    assert_eq!(map.insert("e", 4), Some(("c", 2)));
    assert_eq!(map.insert("f", 5), Some(("a", 0)));
}

#[test]
fn repeated_lookups_of_the_newest_entry_keep_the_order() {
    let mut map = filled(3, &["a", "b", "c"]);
    for _ in 0..3 {
        assert_eq!(map.get(&"c"), Some(&2));
    }
    assert_eq!(map.get(&"a"), Some(&0));
    assert_eq!(map.get(&"a"), Some(&0));
    assert_eq!(map.insert("d", 3), Some(("b", 1)));
    assert_eq!(map.insert("e", 4), Some(("c", 2)));
    assert_eq!(map.insert("f", 5), Some(("a", 0)));
}

#[test]
fn a_missing_key_is_not_a_use() {
    let mut map = filled(2, &["a", "b"]);
    assert_eq!(map.get(&"z"), None);
    assert_eq!(map.insert("c", 2), Some(("a", 0)));
}

#[test]
fn reinserting_a_key_returns_its_old_value_and_evicts_nothing() {
    let mut map = filled(2, &["a", "b"]);
    assert_eq!(map.insert("a", 10), Some(("a", 0)));
    assert_eq!(map.len(), 2);
    assert_eq!(map.insert("c", 2), Some(("b", 1)));
    assert_eq!(map.get(&"a"), Some(&10));
}

#[test]
fn removing_an_entry_frees_its_slot() {
    let mut map = filled(2, &["a", "b"]);
    assert_eq!(map.remove(&"a"), Some(0));
    assert_eq!(map.insert("c", 2), None);
    assert_eq!(map.insert("d", 3), Some(("b", 1)));
}

#[test]
fn a_capacity_of_one_keeps_only_the_newest_entry() {
    let mut map = filled(1, &["a"]);
    assert_eq!(map.insert("b", 1), Some(("a", 0)));
    assert_eq!(map.get(&"a"), None);
    assert_eq!(map.get(&"b"), Some(&1));
}

#[test]
fn a_capacity_of_zero_is_treated_as_one() {
    let mut map = LruMap::new(0);
    assert_eq!(map.insert("a", 0), None);
    assert_eq!(map.insert("b", 1), Some(("a", 0)));
}

#[test]
fn drain_empties_the_map_least_recently_used_first() {
    let mut map = filled(3, &["a", "b", "c"]);
    map.get(&"a");
    assert_eq!(map.drain(), vec![("b", 1), ("c", 2), ("a", 0)]);
    assert_eq!(map.len(), 0);
    assert_eq!(map.insert("d", 3), None);
}
