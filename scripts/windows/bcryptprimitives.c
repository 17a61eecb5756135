/*
 * bcryptprimitives.dll for running SloPN's Windows test binaries under Wine 8.
 *
 * Rust's standard library gets its randomness from ProcessPrng in bcryptprimitives.dll
 * (Windows 10 and later). Debian's Wine 8 ships no such DLL, so every Rust binary fails to
 * start there. This one exports ProcessPrng on top of RtlGenRandom (SystemFunction036 in
 * advapi32), which Wine has. scripts/wine-runner builds it with mingw and puts it beside
 * the binary it runs. Not shipped: real Windows has the DLL.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
