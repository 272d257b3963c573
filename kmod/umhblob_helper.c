// SPDX-License-Identifier: GPL-2.0
/*
 * The helper's life: start, handshake, request I/O, failure and restart,
 * and the kill-and-wait on module exit.
 *
 * Each started helper is one struct umhb_proc with two kernel threads. The
 * writer sends queued request frames to the helper's stdin; the reader
 * reads reply frames from its stdout and completes the matching request.
 * Callers only queue a request and wait for its completion with a
 * timeout, so no lock is ever held across pipe I/O, and a helper that is
 * stopped, hung or dead blocks no caller beyond the request timeout.
 *
 * Writes happen in a kernel thread for a second reason: a write to the
 * pipe of a dead helper raises SIGPIPE in the writing task, and a kernel
 * thread ignores it, whereas the caller's process would be killed.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "umhblob.h"
#include "umhblob_blob.h"
#include "umhblob_compat.h"

#define UMHB_MAX_INFLIGHT	256
#define UMHB_RESTART_DELAY_MIN	msecs_to_jiffies(100)
#define UMHB_RESTART_DELAY_MAX	msecs_to_jiffies(5000)
#define UMHB_EXIT_WARN_INTERVAL	(10 * HZ)

unsigned int umhb_request_timeout_ms = 5000;
module_param_named(request_timeout_ms, umhb_request_timeout_ms, uint, 0644);
MODULE_PARM_DESC(request_timeout_ms,
		 "Time a request waits for the helper's reply, in ms; a helper that misses it is killed and restarted (default 5000)");

unsigned int umhb_start_timeout_ms = 10000;
module_param_named(start_timeout_ms, umhb_start_timeout_ms, uint, 0644);
MODULE_PARM_DESC(start_timeout_ms,
		 "Time a new helper has to answer the handshake, in ms (default 10000)");

/* One running helper process and the threads that talk to it. */
struct umhb_proc {
	struct kref ref;
	struct file *to_helper;
	struct file *from_helper;
	struct pid *tgid;
	pid_t pid;
	u32 max_payload;	/* smaller of ours and the helper's */
	struct task_struct *reader;
	struct task_struct *writer;
	wait_queue_head_t writer_wait;
	struct wait_queue_entry exit_wait;	/* on tgid->wait_pidfd */
	struct work_struct exit_work;

	spinlock_t lock;	/* protects the fields below */
	struct list_head inflight;
	struct list_head sendq;
	unsigned int inflight_count;
	u64 last_id;
	bool dead;
	bool served;		/* answered a request after the handshake */
};

/* The current helper; starts and teardowns are serialized by umhb_life_lock. */
static DEFINE_MUTEX(umhb_life_lock);
static DEFINE_SPINLOCK(umhb_current_lock);
static struct umhb_proc *umhb_current;
static DECLARE_WAIT_QUEUE_HEAD(umhb_ready_wait);
static bool umhb_shutting_down;

static void umhb_restart_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(umhb_restart_work, umhb_restart_fn);
static unsigned long umhb_restart_delay;	/* under umhb_life_lock */

static atomic64_t umhb_starts = ATOMIC64_INIT(0);
static atomic64_t umhb_requests = ATOMIC64_INIT(0);
static atomic64_t umhb_errors = ATOMIC64_INIT(0);

struct umhb_request *umhb_request_alloc(size_t frame_len)
{
	struct umhb_request *req;

	req = kzalloc(sizeof(*req), GFP_KERNEL);
	if (!req)
		return NULL;

	req->frame = kvmalloc(frame_len, GFP_KERNEL);
	if (!req->frame) {
		kfree(req);
		return NULL;
	}
	req->frame_len = frame_len;
	kref_init(&req->ref);
	INIT_LIST_HEAD(&req->inflight_node);
	INIT_LIST_HEAD(&req->sendq_node);
	init_completion(&req->done);
	return req;
}

static void umhb_request_release(struct kref *ref)
{
	struct umhb_request *req = container_of(ref, struct umhb_request, ref);

	kvfree(req->frame);
	kvfree(req->reply);
	kfree(req);
}

void umhb_request_put(struct umhb_request *req)
{
	kref_put(&req->ref, umhb_request_release);
}

static void umhb_proc_release(struct kref *ref)
{
	kfree(container_of(ref, struct umhb_proc, ref));
}

static void umhb_proc_put(struct umhb_proc *p)
{
	kref_put(&p->ref, umhb_proc_release);
}

/*
 * Hand a request its result and drop the reference its list held. A reply
 * for a caller that has left is freed here, never passed on.
 */
static void umhb_complete(struct umhb_proc *p, struct umhb_request *req,
			  int error, void *reply, size_t reply_len)
{
	spin_lock(&p->lock);
	if (!req->completed && !req->abandoned) {
		req->error = error;
		req->reply = reply;
		req->reply_len = reply_len;
		reply = NULL;
	}
	req->completed = true;
	complete_all(&req->done);
	spin_unlock(&p->lock);

	kvfree(reply);
	umhb_request_put(req);
}

static void umhb_schedule_restart(void)
{
	if (!READ_ONCE(umhb_shutting_down))
		queue_delayed_work(system_long_wq, &umhb_restart_work,
				   READ_ONCE(umhb_restart_delay));
}

static const char *umhb_failure_name(int reason)
{
	switch (reason) {
	case -ECONNRESET:
		return "exited or closed its stdout";
	case -EPIPE:
		return "closed its stdin";
	case -ETIMEDOUT:
		return "stopped answering";
	case -EPROTO:
		return "broke the protocol";
	default:
		return "failed";
	}
}

/*
 * Declare @p broken: fail every request in flight with -ECONNRESET and kill
 * the helper; if @p is the current helper, schedule its replacement. Safe
 * from any context that may sleep, including @p's own threads, and
 * idempotent. The teardown that waits for the exit and frees the pipes
 * runs later, under umhb_life_lock.
 */
static void umhb_proc_fail(struct umhb_proc *p, int reason)
{
	struct umhb_request *req, *next;
	LIST_HEAD(failed);
	bool is_current;

	spin_lock(&p->lock);
	if (p->dead) {
		spin_unlock(&p->lock);
		return;
	}
	p->dead = true;
	list_splice_init(&p->inflight, &failed);
	p->inflight_count = 0;
	spin_unlock(&p->lock);

	if (reason != -ESHUTDOWN)
		pr_warn_ratelimited("helper %d %s (%d), killing it\n", p->pid,
				    umhb_failure_name(reason), reason);
	list_for_each_entry_safe(req, next, &failed, inflight_node) {
		list_del_init(&req->inflight_node);
		umhb_complete(p, req, -ECONNRESET, NULL, 0);
	}

	kill_pid(p->tgid, SIGKILL, 1);
	wake_up(&p->writer_wait);

	spin_lock(&umhb_current_lock);
	is_current = p == umhb_current;
	spin_unlock(&umhb_current_lock);
	if (is_current)
		umhb_schedule_restart();
}

/* Sleep until kthread_stop(), ignoring the SIGKILL that unblocked pipe I/O. */
static void umhb_thread_park(void)
{
	while (!kthread_should_stop()) {
		flush_signals(current);
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
}

/* Read up to @len bytes, looping over short reads; returns bytes read. */
static ssize_t umhb_read_full(struct file *file, void *buf, size_t len)
{
	size_t done = 0;
	loff_t pos = 0;

	while (done < len) {
		ssize_t n = kernel_read(file, buf + done, len - done, &pos);

		if (n < 0)
			return n;
		if (n == 0)
			break;
		done += n;
	}
	return done;
}

static int umhb_write_full(struct file *file, const void *buf, size_t len)
{
	size_t done = 0;
	loff_t pos = 0;

	while (done < len) {
		ssize_t n = kernel_write(file, buf + done, len - done, &pos);

		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;
		done += n;
	}
	return 0;
}

/* Find the request with the reply's id and take it off the in-flight list. */
static struct umhb_request *umhb_claim_reply(struct umhb_proc *p,
					     const struct umhb_header *hdr)
{
	struct umhb_request *req;

	spin_lock(&p->lock);
	list_for_each_entry(req, &p->inflight, inflight_node) {
		if (req->id != hdr->id)
			continue;
		if (umhb_check_reply(hdr, req->type))
			break;
		list_del_init(&req->inflight_node);
		p->inflight_count--;
		if (req->type != UMHB_TYPE_HELLO)
			p->served = true;
		spin_unlock(&p->lock);
		return req;
	}
	spin_unlock(&p->lock);

	pr_err_ratelimited("helper %d sent reply type %#x to request %llu, which %s\n",
			   p->pid, hdr->type, hdr->id,
			   list_entry_is_head(req, &p->inflight, inflight_node) ?
			   "is not in flight" : "has another type");
	return NULL;
}

/* Read one reply frame and complete its request. Any error ends the helper. */
static int umhb_read_reply(struct umhb_proc *p)
{
	u8 raw[UMHB_HEADER_SIZE];
	struct umhb_request *req;
	struct umhb_header hdr;
	ssize_t n;
	void *frame;
	int err;

	n = umhb_read_full(p->from_helper, raw, sizeof(raw));
	if (n < 0)
		return n;
	if (n == 0)
		return -ECONNRESET;	/* the helper exited */
	if (n < sizeof(raw)) {
		pr_err_ratelimited("helper %d sent a truncated header of %zd bytes\n",
				   p->pid, n);
		return -EPROTO;
	}

	err = umhb_decode_header(raw, sizeof(raw), &hdr);
	if (err) {
		pr_err_ratelimited("helper %d sent an invalid frame header (%d)\n",
				   p->pid, err);
		return -EPROTO;
	}

	req = umhb_claim_reply(p, &hdr);
	if (!req)
		return -EPROTO;

	frame = kvmalloc(sizeof(raw) + hdr.length, GFP_KERNEL);
	if (!frame) {
		umhb_complete(p, req, -ENOMEM, NULL, 0);
		return -ENOMEM;
	}
	memcpy(frame, raw, sizeof(raw));

	n = umhb_read_full(p->from_helper, frame + sizeof(raw), hdr.length);
	if (n != hdr.length) {
		kvfree(frame);
		umhb_complete(p, req, -ECONNRESET, NULL, 0);
		pr_err_ratelimited("helper %d sent %zd of %u payload bytes\n",
				   p->pid, n, hdr.length);
		/* A short read ends at end of file: the helper exited. */
		return n < 0 ? n : -ECONNRESET;
	}

	umhb_complete(p, req, 0, frame, sizeof(raw) + hdr.length);
	return 0;
}

static int umhb_reader_fn(void *data)
{
	struct umhb_proc *p = data;
	int err = 0;

	/* Teardown sends SIGKILL to end a read that no exit will end. */
	allow_signal(SIGKILL);
	while (!err && !kthread_should_stop())
		err = umhb_read_reply(p);
	if (err)
		umhb_proc_fail(p, err);
	umhb_thread_park();
	return 0;
}

static bool umhb_writer_should_wake(struct umhb_proc *p)
{
	bool wake;

	spin_lock(&p->lock);
	wake = p->dead || !list_empty(&p->sendq);
	spin_unlock(&p->lock);
	return wake || kthread_should_stop();
}

static struct umhb_request *umhb_next_to_send(struct umhb_proc *p)
{
	struct umhb_request *req = NULL;

	spin_lock(&p->lock);
	if (!p->dead && !list_empty(&p->sendq)) {
		req = list_first_entry(&p->sendq, struct umhb_request,
				       sendq_node);
		list_del_init(&req->sendq_node);
	}
	spin_unlock(&p->lock);
	return req;
}

/* Drop the send queue's references once the helper is dead. */
static void umhb_drain_sendq(struct umhb_proc *p)
{
	struct umhb_request *req, *next;
	LIST_HEAD(drained);

	spin_lock(&p->lock);
	list_splice_init(&p->sendq, &drained);
	spin_unlock(&p->lock);

	list_for_each_entry_safe(req, next, &drained, sendq_node) {
		list_del_init(&req->sendq_node);
		umhb_request_put(req);
	}
}

static int umhb_writer_fn(void *data)
{
	struct umhb_proc *p = data;
	struct umhb_request *req;
	int err = 0;

	allow_signal(SIGKILL);
	while (!err && !kthread_should_stop()) {
		if (wait_event_interruptible(p->writer_wait,
					     umhb_writer_should_wake(p)))
			break;
		req = umhb_next_to_send(p);
		if (!req) {
			if (READ_ONCE(p->dead))
				break;
			continue;
		}
		err = umhb_write_full(p->to_helper, req->frame, req->frame_len);
		umhb_request_put(req);
	}
	if (err)
		umhb_proc_fail(p, err);
	umhb_drain_sendq(p);
	umhb_thread_park();
	return 0;
}

static void umhb_set_frame_id(void *frame, u64 id)
{
	struct umhb_header hdr;

	umhb_decode_header(frame, UMHB_HEADER_SIZE, &hdr);
	hdr.id = id;
	umhb_encode_header(&hdr, frame);
}

static int umhb_submit(struct umhb_proc *p, struct umhb_request *req)
{
	int err = 0;

	spin_lock(&p->lock);
	if (p->dead) {
		err = -ECONNRESET;
	} else if (p->inflight_count >= UMHB_MAX_INFLIGHT) {
		err = -EBUSY;
	} else {
		req->id = ++p->last_id;
		umhb_set_frame_id(req->frame, req->id);
		kref_get(&req->ref);
		list_add_tail(&req->inflight_node, &p->inflight);
		kref_get(&req->ref);
		list_add_tail(&req->sendq_node, &p->sendq);
		p->inflight_count++;
	}
	spin_unlock(&p->lock);

	if (!err)
		wake_up(&p->writer_wait);
	return err;
}

/*
 * Wait for @req's reply until @deadline. A caller that times out kills the
 * helper, because a helper that misses a deadline cannot be trusted to
 * reply to later ones. A caller interrupted by a signal leaves its request
 * marked abandoned, so its late reply is dropped instead of being read as
 * the reply to some later request.
 */
static int umhb_wait(struct umhb_proc *p, struct umhb_request *req,
		     unsigned long deadline)
{
	long left = max_t(long, (long)(deadline - jiffies), 1);
	long ret;

	ret = wait_for_completion_interruptible_timeout(&req->done, left);
	if (ret > 0)
		return req->error;

	spin_lock(&p->lock);
	if (req->completed) {
		spin_unlock(&p->lock);
		return req->error;
	}
	req->abandoned = true;
	spin_unlock(&p->lock);

	if (ret < 0)
		return -ERESTARTSYS;

	pr_warn_ratelimited("helper %d did not answer request %llu in time\n",
			    p->pid, req->id);
	umhb_proc_fail(p, -ETIMEDOUT);
	return -ETIMEDOUT;
}

static struct umhb_proc *umhb_get_current(void)
{
	struct umhb_proc *p;

	spin_lock(&umhb_current_lock);
	p = umhb_current;
	if (p && !READ_ONCE(p->dead))
		kref_get(&p->ref);
	else
		p = NULL;
	spin_unlock(&umhb_current_lock);
	return p;
}

static bool umhb_ready_or_shutting_down(void)
{
	struct umhb_proc *p = umhb_get_current();

	if (p) {
		umhb_proc_put(p);
		return true;
	}
	return READ_ONCE(umhb_shutting_down);
}

/* Get the running helper, waiting for a restart to finish until @deadline. */
static struct umhb_proc *umhb_get_ready(unsigned long deadline)
{
	struct umhb_proc *p;
	long left, ret;

	for (;;) {
		p = umhb_get_current();
		if (p)
			return p;
		if (READ_ONCE(umhb_shutting_down))
			return ERR_PTR(-ESHUTDOWN);

		left = (long)(deadline - jiffies);
		if (left <= 0)
			return ERR_PTR(-ETIMEDOUT);
		ret = wait_event_interruptible_timeout(umhb_ready_wait,
						       umhb_ready_or_shutting_down(),
						       left);
		if (ret < 0)
			return ERR_PTR(-ERESTARTSYS);
	}
}

static int umhb_call_proc(struct umhb_proc *p, struct umhb_request *req,
			  unsigned long deadline)
{
	int err;

	if (req->frame_len - UMHB_HEADER_SIZE > p->max_payload)
		return -EMSGSIZE;

	err = umhb_submit(p, req);
	if (err)
		return err;
	return umhb_wait(p, req, deadline);
}

/**
 * umhb_call - send a request frame to the helper and wait for its reply
 * @req: request whose frame contains a valid header of type PING or ECHO
 *
 * On success req->reply is the reply frame, with the id the helper saw.
 * Returns 0 or a negative errno: -ETIMEDOUT when no reply came in time,
 * -ECONNRESET when the helper died or broke the protocol, -EMSGSIZE for a
 * payload larger than the helper accepts, -EBUSY when too many requests
 * are in flight, -ESHUTDOWN during module unload, -ERESTARTSYS on a signal.
 */
int umhb_call(struct umhb_request *req)
{
	unsigned long deadline;
	struct umhb_proc *p;
	int err;

	deadline = jiffies + msecs_to_jiffies(READ_ONCE(umhb_request_timeout_ms));
	atomic64_inc(&umhb_requests);

	p = umhb_get_ready(deadline);
	if (IS_ERR(p)) {
		err = PTR_ERR(p);
	} else {
		err = umhb_call_proc(p, req, deadline);
		umhb_proc_put(p);
	}

	if (err)
		atomic64_inc(&umhb_errors);
	return err;
}

void umhb_get_stats(struct umhb_stats *stats)
{
	struct umhb_proc *p = umhb_get_current();

	stats->helper_starts = atomic64_read(&umhb_starts);
	stats->requests = atomic64_read(&umhb_requests);
	stats->errors = atomic64_read(&umhb_errors);
	stats->helper_pid = p ? p->pid : 0;
	if (p)
		umhb_proc_put(p);
}

/* Exchange HELLO frames: same protocol version, and the pid we started. */
static int umhb_handshake(struct umhb_proc *p)
{
	struct umhb_header hdr = {
		.magic = UMHB_MAGIC,
		.version = UMHB_VERSION,
		.type = UMHB_TYPE_HELLO,
		.length = UMHB_HELLO_SIZE,
	};
	struct umhb_hello ours = { .max_payload = UMHB_MAX_PAYLOAD };
	struct umhb_hello theirs;
	unsigned long deadline;
	struct umhb_request *req;
	int err;

	req = umhb_request_alloc(UMHB_HEADER_SIZE + UMHB_HELLO_SIZE);
	if (!req)
		return -ENOMEM;
	req->type = UMHB_TYPE_HELLO;
	umhb_encode_header(&hdr, req->frame);
	umhb_encode_hello(&ours, req->frame + UMHB_HEADER_SIZE);

	deadline = jiffies + msecs_to_jiffies(READ_ONCE(umhb_start_timeout_ms));
	err = umhb_call_proc(p, req, deadline);
	if (err)
		goto out;

	umhb_decode_header(req->reply, UMHB_HEADER_SIZE, &hdr);
	if (hdr.status) {
		pr_err("helper %d rejected the handshake with status %u\n",
		       p->pid, hdr.status);
		err = -EPROTO;
		goto out;
	}
	umhb_decode_hello(req->reply + UMHB_HEADER_SIZE, &theirs);
	if (theirs.pid != p->pid) {
		pr_err("helper %d answered the handshake as pid %u\n",
		       p->pid, theirs.pid);
		err = -EPROTO;
		goto out;
	}
	p->max_payload = min_t(u32, theirs.max_payload, UMHB_MAX_PAYLOAD);
out:
	umhb_request_put(req);
	return err;
}

static void umhb_exit_work_fn(struct work_struct *work)
{
	umhb_proc_fail(container_of(work, struct umhb_proc, exit_work),
		       -ECONNRESET);
}

/*
 * Runs at every wake-up of the helper's pidfd wait queue, in atomic
 * context. The exit is noticed here even when the helper's stdout gives
 * no end of file, because another process has a write end of it open.
 */
static int umhb_exit_wake(struct wait_queue_entry *wait, unsigned int mode,
			  int sync, void *key)
{
	struct umhb_proc *p = container_of(wait, struct umhb_proc, exit_wait);

	if (umhb_helper_exited(p->tgid))
		schedule_work(&p->exit_work);
	return 0;
}

static void umhb_watch_exit(struct umhb_proc *p)
{
	INIT_WORK(&p->exit_work, umhb_exit_work_fn);
	init_waitqueue_func_entry(&p->exit_wait, umhb_exit_wake);
	add_wait_queue(&p->tgid->wait_pidfd, &p->exit_wait);
	/* An exit before the entry was added woke no waiter. */
	if (umhb_helper_exited(p->tgid))
		schedule_work(&p->exit_work);
}

static void umhb_unwatch_exit(struct umhb_proc *p)
{
	remove_wait_queue(&p->tgid->wait_pidfd, &p->exit_wait);
	cancel_work_sync(&p->exit_work);
}

static struct umhb_proc *umhb_proc_create(struct umhb_umh_info *info)
{
	struct umhb_proc *p;

	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p)
		return NULL;

	kref_init(&p->ref);
	spin_lock_init(&p->lock);
	INIT_LIST_HEAD(&p->inflight);
	INIT_LIST_HEAD(&p->sendq);
	init_waitqueue_head(&p->writer_wait);
	p->to_helper = info->pipe_to_umh;
	p->from_helper = info->pipe_from_umh;
	p->tgid = info->tgid;
	p->pid = pid_nr(info->tgid);
	p->max_payload = UMHB_MAX_PAYLOAD;
	umhb_watch_exit(p);
	return p;
}

static bool umhb_helper_released(struct pid *pid)
{
	bool released;

	rcu_read_lock();
	released = !pid_task(pid, PIDTYPE_PID);
	rcu_read_unlock();
	return released;
}

/*
 * Wait until the killed helper is gone from /proc, so nothing of it is
 * left when rmmod returns. The pidfd wake-up marks the exit but comes
 * just before kthreadd's auto-reap releases the task, and nothing wakes
 * a waiter at the release, so that last short step is polled.
 */
static void umhb_wait_exited(struct umhb_proc *p)
{
	unsigned int polls = 0;

	while (!wait_event_timeout(p->tgid->wait_pidfd,
				   umhb_helper_exited(p->tgid),
				   UMHB_EXIT_WARN_INTERVAL))
		pr_warn("helper %d has not exited %u s after SIGKILL\n",
			p->pid, UMHB_EXIT_WARN_INTERVAL / HZ);

	while (!umhb_helper_released(p->tgid)) {
		if (++polls % 10000 == 0)
			pr_warn("helper %d exited but is still not released\n",
				p->pid);
		usleep_range(100, 200);
	}
}

static void umhb_thread_stop(struct task_struct *thread)
{
	if (!thread)
		return;
	send_sig(SIGKILL, thread, 1);
	kthread_stop(thread);
}

/*
 * Kill the helper, wait until it has exited, stop its threads and release
 * the pipes and the pid. The helper goes first: once it has exited, a
 * read blocked on its stdout gets end of file, and the SIGKILL sent to
 * each thread ends any pipe I/O that a leftover file reference keeps open.
 */
static void umhb_proc_teardown(struct umhb_proc *p)
{
	umhb_proc_fail(p, -ESHUTDOWN);
	umhb_wait_exited(p);
	umhb_unwatch_exit(p);
	umhb_thread_stop(p->reader);
	umhb_thread_stop(p->writer);
	umhb_drain_sendq(p);

	fput(p->to_helper);
	fput(p->from_helper);
	put_pid(p->tgid);
	umhb_proc_put(p);
}

static int umhb_proc_start_threads(struct umhb_proc *p)
{
	p->reader = kthread_run(umhb_reader_fn, p, "umhblob-rd/%d", p->pid);
	if (IS_ERR(p->reader)) {
		p->reader = NULL;
		return -ENOMEM;
	}
	p->writer = kthread_run(umhb_writer_fn, p, "umhblob-wr/%d", p->pid);
	if (IS_ERR(p->writer)) {
		p->writer = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* Start a helper and make it current. Called with umhb_life_lock held. */
static int umhb_start_locked(void)
{
	size_t blob_len = umhb_blob_end - umhb_blob_start;
	struct umhb_umh_info info;
	struct umhb_proc *p;
	ktime_t started;
	int err;

	started = ktime_get();
	err = umhb_fork_usermode_blob(UMHB_DRIVER_NAME, umhb_blob_start,
				      blob_len, &info);
	if (err) {
		pr_err_ratelimited("starting the %zu-byte helper failed (%d)\n",
				   blob_len, err);
		return err;
	}

	p = umhb_proc_create(&info);
	if (!p) {
		kill_pid(info.tgid, SIGKILL, 1);
		fput(info.pipe_to_umh);
		fput(info.pipe_from_umh);
		put_pid(info.tgid);
		return -ENOMEM;
	}

	err = umhb_proc_start_threads(p);
	if (!err)
		err = umhb_handshake(p);
	if (err) {
		pr_err_ratelimited("helper %d failed the handshake (%d)\n",
				   p->pid, err);
		umhb_proc_teardown(p);
		return err;
	}

	spin_lock(&umhb_current_lock);
	umhb_current = p;
	spin_unlock(&umhb_current_lock);
	wake_up_all(&umhb_ready_wait);

	atomic64_inc(&umhb_starts);
	pr_info_ratelimited("helper %d ready in %lld us\n", p->pid,
			    ktime_us_delta(ktime_get(), started));
	return 0;
}

static struct umhb_proc *umhb_take_current(void)
{
	struct umhb_proc *p;

	spin_lock(&umhb_current_lock);
	p = umhb_current;
	umhb_current = NULL;
	spin_unlock(&umhb_current_lock);
	return p;
}

/*
 * Back-off for the next restart: none after a helper that served requests,
 * doubling up to UMHB_RESTART_DELAY_MAX while helpers die before serving
 * any, so a helper that crashes at once cannot make the module spin.
 */
static void umhb_update_restart_delay(struct umhb_proc *dead)
{
	if (dead && dead->served)
		umhb_restart_delay = 0;
	else if (!umhb_restart_delay)
		umhb_restart_delay = UMHB_RESTART_DELAY_MIN;
	else
		umhb_restart_delay = min(umhb_restart_delay * 2,
					 UMHB_RESTART_DELAY_MAX);
}

static void umhb_restart_fn(struct work_struct *work)
{
	struct umhb_proc *old;

	mutex_lock(&umhb_life_lock);
	if (umhb_shutting_down)
		goto out;

	old = umhb_get_current();
	if (old) {
		/* A live helper: this run was queued for one already replaced. */
		umhb_proc_put(old);
		goto out;
	}

	old = umhb_take_current();
	umhb_update_restart_delay(old);
	if (old)
		umhb_proc_teardown(old);
	if (umhb_start_locked())
		umhb_schedule_restart();
out:
	mutex_unlock(&umhb_life_lock);
}

int umhb_helper_init(void)
{
	int err;

	mutex_lock(&umhb_life_lock);
	umhb_shutting_down = false;
	err = umhb_start_locked();
	mutex_unlock(&umhb_life_lock);
	return err;
}

/*
 * Called after the device is gone, so no caller is left. The second
 * cancel catches a restart queued by the dying helper's own threads.
 */
void umhb_helper_exit(void)
{
	struct umhb_proc *p;

	WRITE_ONCE(umhb_shutting_down, true);
	wake_up_all(&umhb_ready_wait);
	cancel_delayed_work_sync(&umhb_restart_work);

	mutex_lock(&umhb_life_lock);
	p = umhb_take_current();
	if (p)
		umhb_proc_teardown(p);
	mutex_unlock(&umhb_life_lock);

	cancel_delayed_work_sync(&umhb_restart_work);
}
