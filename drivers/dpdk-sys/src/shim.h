/* The DPDK headers the bindings are made from, and the shim's own declarations: out-of-line
 * wrappers for the static-inline fast path, which bindgen cannot bind. */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

uint16_t bolide_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **pkts, uint16_t n);
uint16_t bolide_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *bolide_pktmbuf_alloc(struct rte_mempool *pool);
void bolide_pktmbuf_free(struct rte_mbuf *m);
/* The first segment's data and its length (bytes). */
uint8_t *bolide_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t bolide_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t bolide_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t bolide_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* The next segment of a chained mbuf, or NULL. */
struct rte_mbuf *bolide_pktmbuf_next(struct rte_mbuf *m);
/* Extends the data by len bytes; NULL when the segment's tailroom is too small. */
uint8_t *bolide_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
/* The calling thread's rte_errno. */
int bolide_errno(void);
/* RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP (function-like macros bindgen cannot evaluate). */
uint64_t bolide_rss_hf_ip_tcp(void);
