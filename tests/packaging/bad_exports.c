/* A library that leaks a symbol outside the moerun_ namespace: check_exports.sh must reject it
 * (the packaging.exports_checker_rejects_leak test), which shows the real check can fail. */
int moerun_fine(void);
int moerun_fine(void) { return 1; }

int leaked_for_test(void);
int leaked_for_test(void) { return 2; }
