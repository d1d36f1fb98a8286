/* Out-of-line wrappers for DPDK's static-inline fast-path functions (rte_ethdev.h, rte_mbuf.h,
 * rte_errno.h), so Rust can call them. Each is one call: no logic lives here. */
#include "shim.h"

uint16_t bolide_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port_id, queue_id, pkts, n);
}

uint16_t bolide_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port_id, queue_id, pkts, n);
}

struct rte_mbuf *bolide_pktmbuf_alloc(struct rte_mempool *pool)
{
	return rte_pktmbuf_alloc(pool);
}

void bolide_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

uint8_t *bolide_pktmbuf_mtod(struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, uint8_t *);
}

uint16_t bolide_pktmbuf_data_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_data_len(m);
}

uint32_t bolide_pktmbuf_pkt_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_pkt_len(m);
}

uint16_t bolide_pktmbuf_nb_segs(const struct rte_mbuf *m)
{
	return m->nb_segs;
}

uint8_t *bolide_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return (uint8_t *)rte_pktmbuf_append(m, len);
}

int bolide_errno(void)
{
	return rte_errno;
}

uint64_t bolide_rss_hf_ip_tcp(void)
{
	return RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP;
}

struct rte_mbuf *bolide_pktmbuf_next(struct rte_mbuf *m)
{
	return m->next;
}
