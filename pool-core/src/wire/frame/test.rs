//! Round trips and garbage for every frame form.

use super::*;
use crate::wire::codec::Small;
use crate::wire::splice::SPLICE_MIN;

#[test]
fn spliced_byte_buffers_make_the_same_frame() {
    let sizes = [0, 5, SPLICE_MIN - 1, SPLICE_MIN, 70_000, 0, 1 << 20];
    let blobs: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| (i * 13 + n) as u8).collect())
        .collect();
    let mut copied = JobBuilder::new("m::echo");
    let mut moved = JobBuilder::new("m::echo");
    for b in &blobs {
        copied.push(b).unwrap();
        moved.push_owned(b.clone()).unwrap();
    }
    assert_eq!(copied.len(), moved.len());
    let (head, spliced) = moved.finish_spliced();
    assert_eq!(spliced.len(), SPLICE_MIN + 70_000 + (1 << 20));
    // The one buffer under the threshold is copied in; no other.
    assert!(
        head.len() < SPLICE_MIN + 100,
        "a big buffer was copied: {}",
        head.len()
    );
    let flat = spliced.flatten(head);
    assert_eq!(flat, copied.finish());
    let Request::Job { mut items, .. } = parse_request(&flat).unwrap() else {
        panic!("not a job")
    };
    for b in &blobs {
        let item = items.next().unwrap().unwrap();
        assert_eq!(crate::wire::codec::decode::<Vec<u8>>(item).unwrap(), *b);
    }
}

#[test]
fn job_round_trip() {
    let mut b = JobBuilder::new("m::square");
    b.push(&3u64).unwrap();
    b.push(&(1i64, "x".to_string())).unwrap();
    assert_eq!(b.count(), 2);
    let frame = b.finish();
    let Request::Job { task, mut items } = parse_request(&frame).unwrap() else {
        panic!("not a job")
    };
    assert_eq!(task, "m::square");
    assert_eq!(job_item_count(&frame), 2);
    assert_eq!(items.remaining(), 2);
    let a: u64 = rmp_serde::from_slice(items.next().unwrap().unwrap()).unwrap();
    assert_eq!(a, 3);
    let b: (i64, String) = rmp_serde::from_slice(items.next().unwrap().unwrap()).unwrap();
    assert_eq!(b, (1, "x".to_owned()));
    assert!(items.next().is_none());
    assert!(matches!(
        parse_request(shutdown_frame()),
        Ok(Request::Shutdown)
    ));
}

#[test]
fn results_round_trip() {
    let mut buf = Vec::new();
    let mut w = ResultsWriter::new(&mut buf);
    w.ok(&49u64);
    w.panicked("boom", Some("src/lib.rs:1:2"));
    w.panicked("quiet", None);
    w.args_decode("bad");
    w.finish();
    let mut r = parse_results(&buf).unwrap();
    assert_eq!(r.remaining(), 4);
    assert_eq!(r.errors(), 3);
    let Outcome::Ok(bytes) = r.next().unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(rmp_serde::from_slice::<u64>(bytes).unwrap(), 49);
    assert_eq!(
        r.next().unwrap().unwrap(),
        Outcome::Panicked {
            message: "boom",
            location: Some("src/lib.rs:1:2")
        }
    );
    assert_eq!(
        r.next().unwrap().unwrap(),
        Outcome::Panicked {
            message: "quiet",
            location: None
        }
    );
    assert_eq!(r.next().unwrap().unwrap(), Outcome::ArgsDecode("bad"));
    assert!(r.next().is_none());

    ResultsWriter::unknown_task(&mut buf);
    assert!(matches!(parse_results(&buf), Err(None)));
}

/// A run of fixed-width items with values of every size of encoding, as `map` sends them.
fn fixed_job(values: &[u64]) -> Vec<u8> {
    let mut b = JobBuilder::fixed_in_buffer("m::square", Vec::new(), 9);
    let mut it = values.iter();
    while b.push_small_run(values.len(), || it.next().and_then(Small::fixed)) > 0 {}
    assert_eq!(b.count() as usize, values.len());
    b.finish()
}

#[test]
fn fixed_width_jobs_and_results_round_trip() {
    let values = [0u64, 1, 127, 128, 255, 256, 65_536, 1 << 32, u64::MAX];
    let job = fixed_job(&values);
    assert_eq!(job_item_count(&job), values.len() as u32);
    let Request::Job { task, items } = parse_request(&job).unwrap() else {
        panic!("not a job")
    };
    assert_eq!(task, "m::square");
    assert!(items.is_fixed());
    let got: Vec<u64> = items
        .map(|item| rmp_serde::from_slice(item.unwrap()).unwrap())
        .collect();
    assert_eq!(got, values);

    let mut buf = Vec::new();
    let mut w = ResultsWriter::new(&mut buf);
    w.set_fixed(9);
    let mut it = values.iter();
    w.ok_small_run(values.len(), || it.next().and_then(Small::fixed));
    assert!(w.is_fixed());
    w.finish();
    assert_eq!(buf.len(), 11 + 9 * values.len());
    let r = parse_results(&buf).unwrap();
    assert_eq!((r.remaining(), r.errors()), (values.len() as u32, 0));
    assert_eq!(r.fixed_values().unwrap().0, 9);
    let got: Vec<u64> = r
        .map(|o| match o.unwrap() {
            Outcome::Ok(bytes) => rmp_serde::from_slice(bytes).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, values);
}

/// A failure after fixed-width values rewrites them into the general form, in order.
#[test]
fn fixed_width_results_turn_general_at_the_first_failure() {
    let mut buf = Vec::new();
    let mut w = ResultsWriter::new(&mut buf);
    w.set_fixed(9);
    let mut n = 0u64;
    let (count, caught) = w.ok_small_run(10, || {
        n += 1;
        if n == 4 {
            panic!("the fourth");
        }
        Small::fixed(&(n * n))
    });
    assert_eq!(count, 3);
    assert!(caught.is_some());
    w.panicked("the fourth", None);
    assert!(!w.is_fixed());
    w.ok(&25u64);
    let mut it = [36u64, 49].into_iter();
    w.ok_small_run(2, || it.next().as_ref().and_then(Small::of));
    w.finish();
    let r = parse_results(&buf).unwrap();
    assert!(r.fixed_values().is_none());
    assert_eq!((r.remaining(), r.errors()), (7, 1));
    let got: Vec<Option<u64>> = r
        .map(|o| match o.unwrap() {
            Outcome::Ok(bytes) => Some(rmp_serde::from_slice(bytes).unwrap()),
            Outcome::Panicked { message, .. } => {
                assert_eq!(message, "the fourth");
                None
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            Some(1),
            Some(4),
            Some(9),
            None,
            Some(25),
            Some(36),
            Some(49)
        ]
    );
}

#[test]
fn fixed_width_garbage_never_panics() {
    let job = fixed_job(&[1, 2, 3]);
    let mut res = Vec::new();
    let mut w = ResultsWriter::new(&mut res);
    w.set_fixed(9);
    let mut it = [4u64, 5].iter();
    w.ok_small_run(2, || it.next().and_then(Small::fixed));
    w.finish();
    for cut in 0..job.len() {
        if let Ok(Request::Job { items, .. }) = parse_request(&job[..cut]) {
            assert!(items.count() <= 3);
        }
    }
    for cut in 0..res.len() {
        if let Ok(r) = parse_results(&res[..cut]) {
            assert!(r.fixed_values().is_none(), "a cut frame is not whole");
            for o in r {
                let _ = o;
            }
        }
    }
    // Width 0 is refused, not looped on.
    let mut zero = job.clone();
    let at = zero.len() - 3 * 9 - 1;
    zero[at] = 0;
    assert!(parse_request(&zero).is_err());
}

#[test]
fn garbage_never_panics() {
    // Every prefix of valid frames, and some random bytes, decode to values or errors.
    let mut b = JobBuilder::new("t");
    b.push(&vec![1u8; 40]).unwrap();
    b.push(&7u32).unwrap();
    let job = b.finish();
    let mut res = Vec::new();
    let mut w = ResultsWriter::new(&mut res);
    w.ok(&"hello".to_string());
    w.panicked("p", Some("l"));
    w.finish();
    for cut in 0..job.len() {
        if let Ok(Request::Job { items, .. }) = parse_request(&job[..cut]) {
            for item in items {
                let _ = item;
            }
        }
    }
    for cut in 0..res.len() {
        if let Ok(r) = parse_results(&res[..cut]) {
            for o in r {
                let _ = o;
            }
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        let mut bytes = Vec::new();
        for _ in 0..(x % 40) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8 % 5);
        }
        if let Ok(Request::Job { items, .. }) = parse_request(&bytes) {
            items.for_each(drop);
        }
        if let Ok(r) = parse_results(&bytes) {
            r.for_each(drop);
        }
    }
}
