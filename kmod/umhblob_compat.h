/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every kernel-version difference the module depends on lives here.
 *
 * The module uses the fork_usermode_blob() contract of Linux 4.18: copy a
 * blob into a private tmpfs file, exec it with two pipes as fd 0 and
 * fd 1, drop the file, and hand back both pipe ends and the pid. From 5.9
 * to 6.16 the kernel offers that contract as umd_load_blob(),
 * fork_usermode_driver() and umd_unload_blob(), built only when
 * CONFIG_USERMODE_DRIVER=y. 6.17 removed them.
 */
#ifndef UMHBLOB_COMPAT_H
#define UMHBLOB_COMPAT_H

#include <linux/pid.h>
#include <linux/sched/signal.h>
#include <linux/usermode_driver.h>
#include <linux/version.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 9, 0) || \
	LINUX_VERSION_CODE >= KERNEL_VERSION(6, 17, 0)
#error "umhblob supports Linux 5.9 to 6.16, the kernels that export umd_load_blob() and fork_usermode_driver()"
#endif

#if !IS_ENABLED(CONFIG_USERMODE_DRIVER)
#error "CONFIG_USERMODE_DRIVER is not set in this kernel, so umd_load_blob() and fork_usermode_driver() are missing: build the kernel with the fragments in kernel-config/ (on 5.10 and 6.1 CONFIG_BPFILTER=y selects it; on 6.12 kernel-config/6.12/*.patch gives it a prompt)"
#endif

struct umhb_umh_info {
	struct file *pipe_to_umh;	/* write end of the helper's fd 0 */
	struct file *pipe_from_umh;	/* read end of the helper's fd 1 */
	struct pid *tgid;
};

/*
 * Start @data as a user mode helper named @name. The tmpfs mount that holds
 * the copy is released at once: the running helper keeps it alive through
 * its executable and working directory, so it goes away when the helper
 * exits and nothing is left on any visible filesystem. On success the
 * caller owns both files and the pid reference.
 */
static inline int umhb_fork_usermode_blob(const char *name, const void *data,
					  size_t len,
					  struct umhb_umh_info *info)
{
	struct umd_info umd = { .driver_name = name };
	int err;

	err = umd_load_blob(&umd, data, len);
	if (err)
		return err;

	err = fork_usermode_driver(&umd);
	umd_unload_blob(&umd);
	if (err)
		return err;

	info->pipe_to_umh = umd.pipe_to_umh;
	info->pipe_from_umh = umd.pipe_from_umh;
	info->tgid = umd.tgid;
	return 0;
}

/*
 * True once every thread of the helper has exited. do_notify_pidfd()
 * wakes pid->wait_pidfd at exit, so callers wait there with this as the
 * condition. Checking !pid_task() instead is racy: the wake-up can come
 * before the pid is detached from the task.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 9, 0)
static inline bool umhb_helper_exited(struct pid *pid)
{
	return thread_group_exited(pid);
}
#else
/*
 * thread_group_exited() is gone by 6.12; this is its 6.1 body.
 * NOTE: 6.9 as the first kernel without it is an estimate; 6.1 has it
 * and 6.12 does not.
 */
static inline bool umhb_helper_exited(struct pid *pid)
{
	struct task_struct *task;
	bool exited;

	rcu_read_lock();
	task = pid_task(pid, PIDTYPE_PID);
	exited = !task ||
		 (READ_ONCE(task->exit_state) && thread_group_empty(task));
	rcu_read_unlock();
	return exited;
}
#endif

#endif /* UMHBLOB_COMPAT_H */
