//! `--jobs N`: the study's guest runs, at most N at a time. Each run is a
//! thread doing what one run did alone (pack its image, boot QEMU, read the
//! console); what a run returns comes back to the calling thread, which
//! alone prints, keeps rows and writes files, so what the study writes does
//! not depend on which run finishes first.
//!
//! After a run fails no new run starts (the ones already started finish):
//! a failure is seldom one run's alone (a broken hypervisor or guest image
//! fails them all), and `--resume` runs the rest later.
use anyhow::Result;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::results::Row;
use super::{in_plan_order, markdown, probes, Run};

/// How the progress lines name run `i` of `runs`: its place in the plan.
pub fn name(runs: &[Run], i: usize) -> String {
    let (w, policy, shadow) = runs[i];
    format!("[{}/{}] {w} × {policy} × shadow {shadow} %", i + 1, runs.len())
}

/// What the study's runs gave.
#[derive(Debug)]
pub struct Collected {
    /// The kept rows and the new ones, in plan order.
    pub rows: Vec<Row>,
    /// (workload, policy × budget, why) of each run that failed, in plan
    /// order whichever failed first.
    pub failed: Vec<(String, String, String)>,
    /// Runs that ended, with rows or not.
    pub ran: usize,
    /// Runs never started: those after a failure.
    pub not_started: usize,
}

/// Runs `run(&runs[i])` for each plan index `i` of `todo`, at most `jobs`
/// at a time (`schedule`), with a progress line as each starts and ends.
/// A run's rows replace those of its workload × policy among `rows` (kept
/// by `--resume`); all are kept in the order of `pairs` and handed to
/// `save` after every run. A failed `save` stops new runs and is the
/// error, once the runs started have ended.
pub fn run_all(
    runs: &[Run],
    todo: &[usize],
    pairs: &[Run],
    jobs: usize,
    mut rows: Vec<Row>,
    run: impl Fn(&Run) -> Result<Vec<Row>> + Sync,
    mut save: impl FnMut(&[Row]) -> Result<()>,
) -> Result<Collected> {
    let started = Instant::now();
    let mut ran = 0;
    // (plan index, workload, policy × budget, why).
    let mut failed: Vec<(usize, String, String, String)> = Vec::new();
    let mut save_failed = None;
    let timed = |k: usize| {
        let t = Instant::now();
        match run(&runs[todo[k]]) {
            Ok(rows) => Ok((t.elapsed(), rows)),
            Err(e) => Err((t.elapsed(), e)),
        }
    };
    let begun = schedule(todo.len(), jobs, timed, |event| {
        let (k, outcome) = match event {
            Event::Started(k) => {
                eprintln!("study: {} started", name(runs, todo[k]));
                return true;
            }
            Event::Finished(k, outcome) => (k, outcome),
        };
        let i = todo[k];
        let (w, policy, shadow) = runs[i];
        ran += 1;
        let left = started.elapsed().as_secs_f64() / ran as f64 * (todo.len() - ran) as f64;
        let took: Duration = match &outcome {
            Ok((t, _)) | Err((t, _)) => *t,
        };
        let timing = format!("{:.0} s; {ran} of {} done, about {:.0} min left", took.as_secs_f64(), todo.len(), left / 60.0);
        // What an earlier study left of this workload × policy goes.
        rows.retain(|r| !(r.workload == w && r.policy == policy));
        match outcome {
            Ok((_, got)) => {
                if let Some(row) = got.first() {
                    eprintln!(
                        "study: {} done: {:.2} MB wire, dirty pages / changed {}, dirty pages / wire {}{} ({timing})",
                        name(runs, i),
                        row.wire_bytes as f64 / 1e6,
                        markdown::ratio(row.dirty_page_bytes, row.changed_bytes),
                        markdown::ratio(row.dirty_page_bytes, row.wire_bytes),
                        got[1..].iter().map(|r| format!("; {}: {:.2} MB", probes::label(r.shadow), r.wire_bytes as f64 / 1e6)).collect::<String>()
                    );
                }
                rows.extend(got);
            }
            Err((_, e)) => {
                eprintln!("study: {} FAILED: {e:#} ({timing})", name(runs, i));
                failed.push((i, w.to_string(), format!("{policy} × shadow {shadow} %"), format!("{e:#}")));
            }
        }
        rows = in_plan_order(std::mem::take(&mut rows), pairs);
        if save_failed.is_none() {
            save_failed = save(&rows).err();
        }
        save_failed.is_none()
    });
    if let Some(e) = save_failed {
        return Err(e);
    }
    failed.sort_by_key(|f| f.0);
    let failed = failed.into_iter().map(|(_, w, what, why)| (w, what, why)).collect();
    Ok(Collected { rows, failed, ran, not_started: todo.len() - begun })
}

/// What `schedule` reports, in the calling thread, as it happens.
#[derive(Debug, PartialEq)]
pub enum Event<T, E> {
    /// Run `i` (an index of the plan) was started.
    Started(usize),
    /// Run `i` ended with this.
    Finished(usize, Result<T, E>),
}

/// Runs `run(i)` for `i` in `0..n`, in that order, at most `jobs` (at least
/// one) at a time, each in its own thread; `event` sees each start and each
/// end in the calling thread. After a run fails, or `event` returns false,
/// no new run starts and those already started finish. Returns how many
/// runs were started: the runs from there on never ran.
///
/// A run that panics panics the caller, once the runs already started have
/// finished.
pub fn schedule<T: Send, E: Send>(n: usize, jobs: usize, run: impl Fn(usize) -> Result<T, E> + Sync, mut event: impl FnMut(Event<T, E>) -> bool) -> usize {
    let jobs = jobs.max(1);
    let run = &run;
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let (mut next, mut running, mut stopped) = (0, 0, false);
        loop {
            while !stopped && running < jobs && next < n {
                stopped |= !event(Event::Started(next));
                let (tx, i) = (tx.clone(), next);
                s.spawn(move || {
                    // Caught so that the run always reports: the loop below
                    // waits for one message per run it started.
                    let got = catch_unwind(AssertUnwindSafe(|| run(i)));
                    // The receiver lives until every run has reported.
                    let _ = tx.send((i, got));
                });
                next += 1;
                running += 1;
            }
            if running == 0 {
                return next;
            }
            // Cannot fail: `tx` is held here, so the channel stays open, and
            // each of the `running` threads sends once.
            let (i, got) = rx.recv().expect("a run always reports");
            running -= 1;
            match got {
                Ok(got) => {
                    stopped |= got.is_err();
                    stopped |= !event(Event::Finished(i, got));
                }
                // `scope` joins the other runs before the panic goes on.
                Err(panic) => resume_unwind(panic),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A fake runner: run `i` sleeps `ms[i]` milliseconds and fails when
    /// `fails(i)`; the runs going at once are counted.
    struct Fake {
        ms: Vec<u64>,
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Fake {
        fn new(ms: &[u64]) -> Self {
            Fake { ms: ms.to_vec(), now: AtomicUsize::new(0), most: AtomicUsize::new(0) }
        }

        fn run(&self, i: usize, fails: impl Fn(usize) -> bool) -> Result<usize, String> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(self.ms[i]));
            self.now.fetch_sub(1, Ordering::SeqCst);
            if fails(i) {
                Err(format!("run {i} failed"))
            } else {
                Ok(i * 10)
            }
        }
    }

    /// Every event of a schedule of `fake`, in order.
    fn events(fake: &Fake, jobs: usize, fails: impl Fn(usize) -> bool + Sync) -> (usize, Vec<Event<usize, String>>) {
        let mut seen = Vec::new();
        let started = schedule(
            fake.ms.len(),
            jobs,
            |i| fake.run(i, &fails),
            |e| {
                seen.push(e);
                true
            },
        );
        (started, seen)
    }

    fn finished(events: &[Event<usize, String>]) -> Vec<usize> {
        events.iter().filter_map(|e| if let Event::Finished(i, _) = e { Some(*i) } else { None }).collect()
    }

    fn started(events: &[Event<usize, String>]) -> Vec<usize> {
        events.iter().filter_map(|e| if let Event::Started(i) = e { Some(*i) } else { None }).collect()
    }

    #[test]
    fn one_job_runs_in_plan_order_one_at_a_time() {
        let fake = Fake::new(&[30, 1, 20, 1]);
        let (n, seen) = events(&fake, 1, |_| false);
        assert_eq!(n, 4);
        let want: Vec<Event<usize, String>> = (0..4).flat_map(|i| [Event::Started(i), Event::Finished(i, Ok(i * 10))]).collect();
        assert_eq!(seen, want);
        assert_eq!(fake.most.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn at_most_n_at_once_started_in_plan_order() {
        let fake = Fake::new(&[120, 20, 20, 20, 20, 120, 20]);
        let (n, seen) = events(&fake, 3, |_| false);
        assert_eq!(n, 7);
        assert_eq!(started(&seen), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(fake.most.load(Ordering::SeqCst), 3);
        // Every run ends once, each with its own result, whatever the order.
        let mut ends: Vec<(usize, usize)> =
            seen.iter().filter_map(|e| if let Event::Finished(i, r) = e { Some((*i, *r.as_ref().unwrap())) } else { None }).collect();
        assert_ne!(ends.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6], "the short runs finish before run 0");
        ends.sort();
        assert_eq!(ends, (0..7).map(|i| (i, i * 10)).collect::<Vec<_>>());
        // A run starts only when fewer than 3 are going: never 4 starts
        // ahead of the ends.
        let mut going = 0usize;
        for e in &seen {
            going = if matches!(e, Event::Started(_)) { going + 1 } else { going - 1 };
            assert!(going <= 3, "{seen:?}");
        }
    }

    #[test]
    fn more_jobs_than_runs_and_no_runs() {
        let fake = Fake::new(&[20, 20]);
        let (n, seen) = events(&fake, 8, |_| false);
        assert_eq!((n, seen.len()), (2, 4));
        assert_eq!(fake.most.load(Ordering::SeqCst), 2);
        let (n, seen) = events(&Fake::new(&[]), 2, |_| false);
        assert_eq!((n, seen.len()), (0, 0));
        // Zero jobs is one.
        assert_eq!(events(&Fake::new(&[1, 1]), 0, |_| false).0, 2);
    }

    #[test]
    fn a_failure_stops_new_starts_and_the_started_runs_finish() {
        // Runs 0 and 1 start together; 1 fails first while 0 still goes.
        let fake = Fake::new(&[150, 10, 10, 10, 10]);
        let (n, seen) = events(&fake, 2, |i| i == 1);
        assert_eq!(n, 2, "{seen:?}");
        assert_eq!(started(&seen), [0, 1]);
        assert_eq!(finished(&seen), [1, 0]);
        assert!(seen.contains(&Event::Finished(1, Err("run 1 failed".into()))));
        assert!(seen.contains(&Event::Finished(0, Ok(0))));

        // One at a time: the run after the failed one never starts.
        let (n, seen) = events(&Fake::new(&[1, 1, 1, 1]), 1, |i| i == 2);
        assert_eq!(n, 3);
        assert_eq!(finished(&seen), [0, 1, 2]);
    }

    #[test]
    fn a_panicking_run_panics_the_caller_after_the_others_end() {
        // The runs that ended, of a schedule where run 1 panics.
        let ended_with = |jobs: usize| {
            let ended = Mutex::new(Vec::new());
            let got = catch_unwind(AssertUnwindSafe(|| {
                schedule(
                    3,
                    jobs,
                    |i| {
                        if i == 1 {
                            panic!("run 1 panics (as the test wants)");
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        ended.lock().unwrap().push(i);
                        Ok::<_, ()>(i)
                    },
                    |_| true,
                )
            }));
            assert!(got.is_err(), "the caller panics");
            ended.into_inner().unwrap()
        };
        // Run 0 was going when run 1 panicked: it finished first.
        assert!(ended_with(2).contains(&0));
        // One at a time: the run after the panic never starts.
        assert_eq!(ended_with(1), [0]);
    }

    // ---- run_all: the study's runs, with a fake runner ----

    /// A row of `run` whose wire bytes tell which run made it (`tag`).
    fn row(&(w, p, s): &Run, tag: u64) -> Row {
        Row {
            workload: w.into(),
            policy: p.into(),
            shadow: s,
            seconds: 4.0,
            epochs: 1,
            dirty_pages: 1,
            dirty_page_bytes: 4096,
            changed_bytes: 10,
            delta_bytes: 10,
            compressed_bytes: 10,
            wire_bytes: tag,
            write_faults: 1,
            pause_us_median: 1,
            pause_us_max: 1,
            progress_rate: None,
            disk: None,
        }
    }

    /// The quick study's plan: 2 workloads × 2 policies, budgets 25 and
    /// full; the runs keep 25.
    const PAIRS: &[Run] = &[
        ("dav1d", "interval:200ms", 25),
        ("dav1d", "interval:200ms", 100),
        ("dav1d", "switch-only", 25),
        ("dav1d", "switch-only", 100),
        ("video", "interval:200ms", 25),
        ("video", "interval:200ms", 100),
        ("video", "switch-only", 25),
        ("video", "switch-only", 100),
    ];

    fn runs() -> Vec<Run<'static>> {
        PAIRS.iter().copied().filter(|r| r.2 == 25).collect()
    }

    /// A fake run: sleeps the longer the earlier it is in the plan (so the
    /// runs end in reverse), then gives its row and its probe's.
    fn fake_run(run: &Run, fail: Option<&str>) -> Result<Vec<Row>> {
        let i = runs().iter().position(|r| r == run).unwrap() as u64;
        std::thread::sleep(Duration::from_millis(20 + 40 * (3 - i)));
        if fail == Some(run.0) && run.1 == "switch-only" {
            anyhow::bail!("the workload exited with 1");
        }
        Ok(vec![row(run, 1 + i), row(&(run.0, run.1, 100), 101 + i)])
    }

    fn keys(rows: &[Row]) -> Vec<(&str, &str, u8)> {
        rows.iter().map(|r| (r.workload.as_str(), r.policy.as_str(), r.shadow)).collect()
    }

    #[test]
    fn rows_come_out_in_plan_order_whichever_run_ends_first() {
        let runs = runs();
        let saved = Mutex::new(Vec::new());
        let got = run_all(
            &runs,
            &[0, 1, 2, 3],
            PAIRS,
            2,
            Vec::new(),
            |r| fake_run(r, None),
            |rows| {
                saved.lock().unwrap().push(keys(rows).len());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(keys(&got.rows), PAIRS);
        assert_eq!(got.rows.iter().map(|r| r.wire_bytes).collect::<Vec<_>>(), [1, 101, 2, 102, 3, 103, 4, 104]);
        assert_eq!((got.ran, got.not_started, got.failed.len()), (4, 0, 0));
        // Saved after every run, each time with what had ended.
        assert_eq!(*saved.lock().unwrap(), [2, 4, 6, 8]);
        // The same rows one at a time.
        let one = run_all(&runs, &[0, 1, 2, 3], PAIRS, 1, Vec::new(), |r| fake_run(r, None), |_| Ok(())).unwrap();
        assert_eq!(one.rows, got.rows);
    }

    #[test]
    fn resume_keeps_the_done_runs_and_replaces_a_partial_one() {
        let runs = runs();
        // Run 0 done earlier; run 2 only half (its own budget, no probe).
        let kept = vec![row(&PAIRS[0], 7), row(&PAIRS[1], 107), row(&PAIRS[4], 9)];
        let got = run_all(&runs, &[1, 2, 3], PAIRS, 2, kept, |r| fake_run(r, None), |_| Ok(())).unwrap();
        assert_eq!(keys(&got.rows), PAIRS);
        assert_eq!(got.rows.iter().map(|r| r.wire_bytes).collect::<Vec<_>>(), [7, 107, 2, 102, 3, 103, 4, 104]);
        assert_eq!(got.ran, 3);
    }

    #[test]
    fn a_failed_run_is_named_and_no_run_starts_after_it() {
        let runs = runs();
        // One at a time: run 1 (dav1d × switch-only) fails, 2 and 3 never start.
        let got = run_all(&runs, &[0, 1, 2, 3], PAIRS, 1, Vec::new(), |r| fake_run(r, Some("dav1d")), |_| Ok(())).unwrap();
        assert_eq!(got.failed, [("dav1d".to_string(), "switch-only × shadow 25 %".to_string(), "the workload exited with 1".to_string())]);
        assert_eq!((got.ran, got.not_started), (2, 2));
        assert_eq!(keys(&got.rows), &PAIRS[..2]);
        // Two at a time: runs 2 and 3 go together and 3 fails first; 2,
        // already started, still ends and keeps its rows.
        let got = run_all(&runs, &[2, 3], PAIRS, 2, Vec::new(), |r| fake_run(r, Some("video")), |_| Ok(())).unwrap();
        assert_eq!(got.failed.len(), 1);
        assert_eq!(got.failed[0].0, "video");
        assert_eq!((got.ran, got.not_started), (2, 0));
        assert_eq!(keys(&got.rows), &PAIRS[4..6]);
    }

    #[test]
    fn a_failed_save_stops_new_runs_and_is_the_error() {
        let runs = runs();
        let started = AtomicUsize::new(0);
        let e = run_all(
            &runs,
            &[0, 1, 2, 3],
            PAIRS,
            1,
            Vec::new(),
            |r| {
                started.fetch_add(1, Ordering::SeqCst);
                fake_run(r, None)
            },
            |_| anyhow::bail!("writing results.csv: no space left"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no space left"), "{e}");
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }
}
