/* The Maglev population loop of agent/dataplane/maglev.py, in C.
 *
 * Userspace helper, not a BPF program: maglev.py compiles it with the system C
 * compiler on first use and calls it through ctypes; without a compiler the
 * same loop runs in Python.  Both give the same table (tests compare them): the
 * permutations (offset, skip) are computed in Python and passed in, so this
 * file only repeats the fill, turn for turn.
 *
 * Entry k (already in identity order) takes a turn whenever its credit reaches
 * the largest weight; a turn claims the next free slot of its permutation.
 * out[slot] = value[k] of the entry that claimed the slot.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int glb_maglev_fill(uint32_t size, uint32_t n, const uint32_t *offset, const uint32_t *skip,
		    const uint32_t *weight, const uint32_t *value, uint32_t *out)
{
	uint8_t *taken;
	uint32_t *pos;
	uint64_t *credit;
	uint32_t wmax = 0, filled = 0, k;

	if (n == 0 || n > size)
		return -1;
	for (k = 0; k < n; k++)
		if (weight[k] > wmax)
			wmax = weight[k];
	if (wmax == 0)
		return -1;
	taken = calloc(size, 1);
	pos = malloc(n * sizeof(*pos));
	credit = calloc(n, sizeof(*credit));
	if (!taken || !pos || !credit) {
		free(taken);
		free(pos);
		free(credit);
		return -1;
	}
	memcpy(pos, offset, n * sizeof(*pos));
	for (;;) {
		for (k = 0; k < n; k++) {
			uint32_t c;

			credit[k] += weight[k];
			if (credit[k] < wmax)
				continue;
			credit[k] -= wmax;
			c = pos[k];
			while (taken[c]) {
				c += skip[k];
				if (c >= size)
					c -= size;
			}
			taken[c] = 1;
			out[c] = value[k];
			c += skip[k];
			pos[k] = c >= size ? c - size : c;
			if (++filled == size)
				goto done;
		}
	}
done:
	free(taken);
	free(pos);
	free(credit);
	return 0;
}
