/* pid 1 of the sandbox, native: exec the runtime as a child, reap orphans, exit as the runtime did.
 *
 *   snapfaas-init PROGRAM [ARG...]
 *
 * Same contract as the Python init (runtime/init.py), which it replaces when it was built
 * (`make`, see the Makefile's `native-init`):
 *
 * - The runtime is PROGRAM (the interpreter with ``-m snapfaas_runtime.start``), exec'd in a
 *   forked child with this process's environment and descriptors. It is not a fork of pid 1 any
 *   more, so it re-keys glibc's pointer guard and stack canary itself (runtime/start.py).
 * - Orphans of the namespace are reaped; when the runtime ends, this process exits with its exit
 *   code, or 128 + the signal number that killed it. Exit 127 if PROGRAM could not be exec'd
 *   (named on stderr), 1 if the runtime could not be forked.
 * - Signals: the kernel delivers to a namespace's pid 1 only signals it handles (and SIGKILL /
 *   SIGSTOP from outside). As the Python init (whose interpreter handles SIGINT only), SIGINT
 *   ends it with 130 (128 + SIGINT); every other signal is dropped.
 * - Deterministic SnapStart init: with ``_SNAPFAAS_RUNTIME_PID`` set and this process pid 1, it
 *   forks children that exit at once until the runtime gets that pid (runtime/init.py,
 *   `burn_pids_before`). With ``_SNAPFAAS_POINTER_GUARD`` set, the kernel's 16 random AT_RANDOM
 *   bytes on this process's stack are zeroed (nothing here reads them: no libc), so its
 *   memory is the same in every init.
 *
 * Freestanding (no libc: raw system calls, x86-64 and aarch64): the process is a few pages of
 * code, its stack, and nothing else to checkpoint and restore (the Python init was a second
 * interpreter, ~60 mappings). Fds 0-2 stay the container's stdio pipes: runc records pid 1's
 * stdio at checkpoint and re-attaches them at restore; nothing here reads or writes them except
 * the error lines above (stderr). */

#if defined(__x86_64__)
#define NR_write 1
#define NR_rt_sigaction 13
#define NR_getpid 39
#define NR_clone 56
#define NR_execve 59
#define NR_exit_group 231
#define NR_wait4 61
#define NR_rt_sigreturn 15
#elif defined(__aarch64__)
#define NR_write 64
#define NR_rt_sigaction 134
#define NR_getpid 172
#define NR_clone 220
#define NR_execve 221
#define NR_exit_group 94
#define NR_wait4 260
#define NR_rt_sigreturn 139
#else
#error "snapfaas-init: only x86-64 and aarch64 are supported (the Python init serves elsewhere)"
#endif

#define SIGINT 2
#define SIGCHLD 17
#define SA_RESTORER 0x04000000
#define EINTR 4
#define AT_NULL 0
#define AT_RANDOM 25

typedef unsigned long word;

static long syscall6(long n, long a, long b, long c, long d, long e, long f) {
#if defined(__x86_64__)
    register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
#else
    register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c,
                  x3 __asm__("x3") = d, x4 __asm__("x4") = e, x5 __asm__("x5") = f;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory", "cc");
    return x0;
#endif
}

#define syscall3(n, a, b, c) syscall6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

static __attribute__((noreturn)) void exit_now(int code) {
    for (;;)
        syscall3(NR_exit_group, code, 0, 0);
}

/* fork(): clone with only SIGCHLD, the child on a copy of this stack. */
static long fork_process(void) {
    return syscall6(NR_clone, SIGCHLD, 0, 0, 0, 0, 0);
}

static long wait_child(long pid, int *status) {
    long got;
    do
        got = syscall6(NR_wait4, pid, (long)status, 0, 0, 0, 0);
    while (got == -EINTR);
    return got;
}

static word length(const char *text) {
    word n = 0;
    while (text[n])
        n++;
    return n;
}

static void say(const char *first, const char *second, const char *third) {
    char line[512];
    word n = 0;
    const char *parts[3] = {first, second, third};
    for (int i = 0; i < 3; i++)
        for (const char *p = parts[i]; *p && n < sizeof line - 1; p++)
            line[n++] = *p;
    line[n++] = '\n';
    syscall3(NR_write, 2, line, n);
}

/* The value of variable `name` in `envp`, or 0. */
static const char *variable(char **envp, const char *name) {
    word size = length(name);
    for (; *envp; envp++) {
        const char *entry = *envp;
        word i = 0;
        while (i < size && entry[i] == name[i])
            i++;
        if (i == size && entry[i] == '=')
            return entry + size + 1;
    }
    return 0;
}

/* A decimal pid (1..4194304), or 0 if `text` is not one. */
static long decimal(const char *text) {
    long value = 0;
    if (!text || !*text)
        return 0;
    for (; *text; text++) {
        if (*text < '0' || *text > '9' || value > 4194304)
            return 0;
        value = value * 10 + (*text - '0');
    }
    return value;
}

/* runtime/init.py `burn_pids_before`: 1 if the next pid of this namespace is now `target`. */
static int burn_pids_before(long target) {
    for (;;) {
        long pid = fork_process();
        if (pid == 0)
            exit_now(0);
        if (pid < 0)
            return 0;
        int status;
        wait_child(pid, &status);
        if (pid >= target - 1)
            return pid == target - 1;
    }
}

static volatile int interrupted;

static void on_interrupt(int signal) {
    (void)signal;
    interrupted = 1;
}

#if defined(__x86_64__)
void snapfaas_init_restorer(void);
__asm__(".text\n.globl snapfaas_init_restorer\nsnapfaas_init_restorer:\n  mov $15, %eax\n  syscall\n");
#endif

struct kernel_sigaction {
    void (*handler)(int);
    word flags;
    void (*restorer)(void);
    word mask;
};

static void handle_interrupt(void) {
    struct kernel_sigaction action = {on_interrupt, 0, 0, 0};
#if defined(__x86_64__)
    action.flags = SA_RESTORER;  /* x86-64 has no kernel-provided return path from a handler */
    action.restorer = snapfaas_init_restorer;
#endif
    syscall6(NR_rt_sigaction, SIGINT, (long)&action, 0, sizeof(word), 0, 0);
}

static int exit_code(int status) {
    int signal = status & 0x7f;
    if (signal != 0 && signal != 0x7f)
        return 128 + signal;
    return (status >> 8) & 0xff;
}

/* Called by _start with the initial stack: argc, argv..., 0, envp..., 0, auxv. */
__attribute__((noreturn, used)) void snapfaas_init_main(word *stack) {
    long argc = (long)stack[0];
    char **argv = (char **)(stack + 1);
    char **envp = argv + argc + 1;
    if (argc < 2) {
        say("snapfaas init: usage: snapfaas-init PROGRAM [ARG...]", "", "");
        exit_now(2);
    }
    if (variable(envp, "_SNAPFAAS_POINTER_GUARD")) {
        char **end = envp;
        while (*end)
            end++;
        for (word *aux = (word *)(end + 1); aux[0] != AT_NULL; aux += 2)
            if (aux[0] == AT_RANDOM) {
                volatile unsigned char *bytes = (volatile unsigned char *)aux[1];
                for (int i = 0; i < 16; i++)
                    bytes[i] = 0;
            }
    }
    const char *target = variable(envp, "_SNAPFAAS_RUNTIME_PID");
    long pid_wanted = decimal(target);
    if (target && *target && syscall3(NR_getpid, 0, 0, 0) == 1 && !burn_pids_before(pid_wanted))
        say("snapfaas init: the runtime could not get pid ", target, " (deterministic init)");
    handle_interrupt();
    long runtime = fork_process();
    if (runtime == 0) {  /* execve resets the handler: the runtime starts with SIGINT's default */
        syscall3(NR_execve, argv[1], argv + 1, envp);
        say("snapfaas init: exec of the runtime ", argv[1], " failed");
        exit_now(127);
    }
    if (runtime < 0) {
        say("snapfaas init: fork of the runtime failed", "", "");
        exit_now(1);
    }
    for (;;) {
        int status = 0;
        long pid = syscall6(NR_wait4, -1, (long)&status, 0, 0, 0, 0);
        if (interrupted)
            exit_now(128 + SIGINT);
        if (pid == -EINTR)
            continue;
        if (pid < 0)  /* ECHILD: the runtime was already reaped: cannot happen, but never spin */
            exit_now(1);
        if (pid == runtime)
            exit_now(exit_code(status));
    }
}

#if defined(__x86_64__)
__asm__(".text\n.globl _start\n_start:\n  xor %ebp, %ebp\n  mov %rsp, %rdi\n  and $-16, %rsp\n"
        "  call snapfaas_init_main\n  hlt\n");
#else
__asm__(".text\n.globl _start\n_start:\n  mov x29, #0\n  mov x30, #0\n  mov x0, sp\n  and sp, x0, #-16\n"
        "  bl snapfaas_init_main\n");
#endif
