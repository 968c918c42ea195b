// Command ownroot runs a program in a mount namespace of its own whose root
// is this process's root, even inside a chroot(2):
//
//	ownroot PROGRAM [ARG...]
//
// Nix 2.8's daemon (Debian 12's) saves the mount namespace it starts in and,
// before it runs ssh for an ssh:// or ssh-ng:// substituter, setns(2)es back
// into it; setns resets the root to the namespace's root, so inside a chroot
// ssh runs outside it, where the ssh config and keys it is given do not exist
// ("Can't open user config file"). Newer Nix restores the root too
// (NixOS/nix#6348 and later). Chroot-based containers and CI roots are where
// many people first try nixcache, so the test harness starts its daemons
// and the Nix commands it runs as root through this, and sshd, which needs a
// mount namespace of its own (`unshare --mount --propagation private` fails
// in a chroot whose / is not a mount). The PID is kept (it execs), so callers stop the program by
// the PID they started.
//
// Shell tools cannot do it: the namespace's root must be pivoted to the
// chroot's, and from inside the chroot only a file descriptor names it.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ownroot PROGRAM [ARG...]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ownroot:", err)
		os.Exit(1)
	}
}

func run(name string, argv []string) error {
	program, err := exec.LookPath(name)
	if err != nil {
		return err
	}
	// Mount namespaces and the root belong to a thread here: this one alone
	// leaves the shared ones, and execs from them.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	// A copy of the tree under this root, detached, for the new root.
	tree, err := unix.OpenTree(unix.AT_FDCWD, "/", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("open_tree /: %w", err)
	}
	ns, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the mount namespace: %w", err)
	}
	// What Nix does: this thread's root becomes the namespace's.
	if err := unix.Setns(ns, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("setns: %w", err)
	}
	unix.Close(ns)
	// Nothing done here may reach the caller's namespace. (Only a mount's
	// root can change propagation: a chroot's / need not be one, the
	// namespace's is.)
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making the namespace's root private: %w", err)
	}
	// The copy goes on top of the namespace's root and becomes the root:
	// the chroot is now the root a setns returns to.
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, "/", unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	if err := unix.Fchdir(tree); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	unix.Close(tree)
	return syscall.Exec(program, argv, os.Environ())
}
