"""prefetching"""
