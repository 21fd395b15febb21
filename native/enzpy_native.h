/* enzpy_native.h - the narrow, versioned C ABI between the Python package and
 * the C++ AD engine (ir_passes/).
 *
 * One call differentiates one function: the caller hands over an LLVM module
 * (bitcode, or textual IR for tests and debugging) and a request in JSON, and
 * gets back an opaque result that holds either the derivative module as
 * bitcode or a structured error (kind, message, source file and line).
 * No C++ exception and no abort crosses this boundary.
 *
 * Request (JSON object; the authoritative list: ir_passes/driver/Request.h):
 *   "function":      name of the primal function in the module (numba native
 *                    calling convention: i32 f(ptr retptr, ptr excinfo, ...)).
 *   "name":          symbol name to give the derivative.
 *   "mode":          "reverse" (default) or "forward".
 *   "width":         the number W >= 1 of tangents (forward mode) or
 *                    cotangents (reverse mode) propagated in one sweep
 *                    (batch mode when W > 1); default 1, at most 64.
 *   "ret_type":      LLVM type of the value the primal stores through retptr
 *                    ("double", "float", "i64", ... or "void" for None).
 *   "ret_activity":  "active" or "const": in reverse mode whether the return
 *                    value is seeded (by an extra trailing argument), in
 *                    forward mode whether its tangent is returned.
 *   "return_primal": include the primal return value in the result struct.
 *   "params":        one entry per primal parameter after retptr and excinfo:
 *                    {"activity": "const" | "active" | "dup" | "dupnoneed",
 *                     "elem": "double" | "float"}   (elem for active/dup)
 *                    "active" is a float passed by value: reverse mode
 *                    returns its adjoint, forward mode takes its tangent.
 *   "noalias":       true when the caller has checked that no two parameters'
 *                    memory overlaps (lets the reverse sweep re-read arrays
 *                    that the function never writes instead of taping them).
 *   "log":           true to record the analyses' decisions in the result log.
 *   "log_format":    "text" (default; what enzpy.explain shows) or "json": a
 *                    list of {stage, kind, value, block?, detail?} records.
 *   "optimize":      false to skip the O3 pipeline on the derivative (for a
 *                    derivative that is differentiated again); default true.
 *   "dump_ir":       debugging: also log the canonical primal and the
 *                    derivative before optimization.
 *
 * Reverse mode, width W: the derivative has the signature
 *   i32 name(ptr retptr, ptr excinfo, <primal params...>,
 *            <W ptr shadows per dup/dupnoneed param: param by param, in
 *             order, and for each param lane 0 .. W-1>,
 *            [<W dret values of the ret float type, lane 0 .. W-1>, when
 *             ret_activity is "active">])
 * and writes through retptr the struct
 *   { [primal return, when return_primal and ret_type is not void],
 *     <W adjoints of each active param, of the param's type: param by
 *      param, in order, and for each param lane 0 .. W-1> }.
 * With W = 1 this is one shadow per dup param, one dret and one adjoint per
 * active param. Lane k is the vector-Jacobian product with lane k's
 * cotangents (lane k's shadows on entry and dret k): the primal runs once
 * and one tape serves every lane; lanes never mix. Each lane's arithmetic is
 * that of a width-one derivative, so lane k's results equal those of a call
 * of width one with lane k's cotangents.
 * It returns 0 on success, the primal's error status (excinfo set by the
 * primal) if the primal raised, then no shadow has been updated; or -1 if
 * the tape or the shadow of an array that the primal allocates could not be
 * allocated.
 *
 * Forward mode, width W: the derivative has the signature
 *   i32 name(ptr retptr, ptr excinfo, <primal params...>,
 *            <W ptr shadows per dup/dupnoneed param: param by param, in
 *             order, and for each param lane 0 .. W-1>,
 *            <W tangents per active param, of the param's type: param by
 *             param, lane 0 .. W-1>)
 * and writes through retptr the struct
 *   { [primal return, when return_primal and ret_type is not void],
 *     [W tangents of the return (lane 0 .. W-1), of ret_type, when
 *      ret_activity is "active"] }.
 * A shadow holds on entry the tangent of the array's contents before the
 * call and on exit the tangent of its contents after the call (lane k's
 * direction in lane k's shadow): elements the function only reads keep their
 * tangent, elements it writes receive the tangent of what it wrote. Shadows
 * are read and written with the primal's element offsets (the same strides).
 * It returns 0 on success, the primal's error status if the primal raised
 * (shadows may then have been partly written, as the primal's own arrays may
 * have been), or -1 if allocating the shadow of an array that the primal
 * allocates failed. Forward mode keeps no tape: the only memory it allocates
 * is those shadows, released with their arrays.
 */
#ifndef ENZPY_NATIVE_H
#define ENZPY_NATIVE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ENZPY_ABI_VERSION 1

#if defined(ENZPY_BUILDING)
#define ENZPY_API __attribute__((visibility("default")))
#else
#define ENZPY_API
#endif

typedef struct enzpy_result enzpy_result;

/* ENZPY_ABI_VERSION of the library. */
ENZPY_API int enzpy_abi_version(void);
/* Major version of the LLVM the engine was built against. */
ENZPY_API int enzpy_llvm_version_major(void);

/* Differentiate. Never returns NULL; free the result with enzpy_result_free. */
ENZPY_API enzpy_result *enzpy_differentiate(const char *module,
                                            size_t module_len,
                                            const char *request,
                                            size_t request_len);

/* 1 when the derivative was produced, 0 on error. */
ENZPY_API int enzpy_result_ok(const enzpy_result *r);
/* Derivative module as bitcode (NULL on error). */
ENZPY_API const char *enzpy_result_bitcode(const enzpy_result *r, size_t *len);
/* Error kind: "unsupported", "activity", "request", "internal" ("" if ok). */
ENZPY_API const char *enzpy_result_error_kind(const enzpy_result *r);
ENZPY_API const char *enzpy_result_error_message(const enzpy_result *r);
/* Source file and line of the construct the error names ("" and 0 if unknown).
 */
ENZPY_API const char *enzpy_result_error_file(const enzpy_result *r);
ENZPY_API unsigned enzpy_result_error_line(const enzpy_result *r);
/* The analyses' decisions, when the request asked for "log". */
ENZPY_API const char *enzpy_result_log(const enzpy_result *r);
ENZPY_API void enzpy_result_free(enzpy_result *r);

#ifdef __cplusplus
}
#endif

#endif /* ENZPY_NATIVE_H */
